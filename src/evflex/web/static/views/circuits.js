/* evflex operator app: the circuits view (registered with EV.app). */
