"""The control ops' checks of their arguments: a bad one is a ``WireError``
whose text is meant for the operator."""

from xenclone.names import BadName, check_name
from xenclone.wire import WireError


def _image_arg(msg):
    """The request's image name: a clone's image is never None (a master's
    is), a list is not even a dict key, and a name may reach a path."""
    try:
        return check_name(msg.get("image"), "image name")
    except BadName as e:
        raise WireError("bad-argument", e.message)


def _int(msg, key, lo, hi, default=None):
    value = msg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError("bad-argument", "%s must be an integer from %d to %d" % (key, lo, hi))
    return value

