/* evflex operator app: the admin view (registered with EV.app). */
