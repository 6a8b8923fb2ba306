/* evflex operator app: the audit view (registered with EV.app). */
