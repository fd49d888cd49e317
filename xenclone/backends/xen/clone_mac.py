"""Each clone's vif MAC, derived from what names the clone.

``clone_mac(image_id, generation, clone_id)`` hashes the three (SHA-256)
and keeps 46 bits: the first octet has the locally-administered bit (1)
set and the group bit (0) clear, so the address is unicast and cannot be
one a vendor assigned (Xen's own OUI, 00:16:3e, is universally
administered: xl draws from it at random for vifs without ``mac=``).  The
generation makes a re-blessed image's clones new addresses, so switches'
and neighbours' caches do not confuse them with the old ones.

The same inputs always give the same MAC (a relaunch, the daemon
restarted).  Distinct clones collide only as two random 46-bit numbers
do: with n clones on one segment the chance of any collision is about
n^2 / 2^47 (docs/disks.md has figures).
"""

import hashlib

LOCAL = 0x02        # IEEE 802: locally administered
GROUP = 0x01        # IEEE 802: multicast


def clone_mac(image_id, generation, clone_id):
    """``"xx:xx:xx:xx:xx:xx"``, lower case, as xl writes MACs."""
    key = "%s\0%s\0%s" % (image_id, generation, clone_id)
    octets = bytearray(hashlib.sha256(key.encode()).digest()[:6])
    octets[0] = (octets[0] | LOCAL) & ~GROUP & 0xFF
    return ":".join("%02x" % o for o in octets)
