package child

// NatDevFD is the descriptor on which the lookup process finds the NAT
// device master opened for it before any privilege was dropped:
// /dev/pf in mode pf, /dev/ipnat in mode ipfilter.
const NatDevFD = 4
