/* evflex operator app: the alerts view (registered with EV.app). */
