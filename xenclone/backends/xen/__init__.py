"""The Xen backend: real Xen through ``xenclone._xen`` (see libxc.py).

Importing this package never needs Xen; the libraries load on first use and
raise ``libxc.XenUnavailable`` on hosts without them.
"""
