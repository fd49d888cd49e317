"""What every layer records of a domain: its id, name, role, state and result.

The controller's ``Domain`` (``control/records.py``), the Xen backend's
``_Domain`` (``backends/xen/domains.py``) and the VMM host's ``Domain``
(``backends/kvm/vmmhost.py``) each add what their layer knows of it.  State
and result are keyword arguments, so that each keeps its own positional
fields after the three that name the domain.
"""

import attr

from xenclone.interfaces import DomainState


@attr.s(eq=False)
class DomainRecord:
    domid = attr.ib()             # None: a VMM host's spare, not launched yet
    name = attr.ib()
    role = attr.ib()              # "master" or "clone"
    state = attr.ib(default=DomainState.PAUSED, kw_only=True)
    result = attr.ib(default=None, kw_only=True)   # the guest's answer, once it is done
