/* evflex operator app: the history view (registered with EV.app). */
