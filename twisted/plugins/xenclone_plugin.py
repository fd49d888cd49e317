from twisted.application.service import ServiceMaker
xenclone = ServiceMaker("xenclone", "xenclone.tap", "Clone running VMs: the xenclone daemon", "xenclone")
