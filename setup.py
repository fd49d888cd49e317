from setuptools import setup; import os.path
setup(cffi_modules=["libxc_shim/linux_build.py:ffibuilder"] + (["libxc_shim/xen_build.py:ffibuilder"] if os.path.exists("/usr/include/xenctrl.h") else []))
