/* evflex operator app: the station view (registered with EV.app). */
