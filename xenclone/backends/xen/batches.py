"""Guest pages in batches of foreign mappings, as the Xen backend copies them."""

BATCH = 1024            # pages per foreign mapping (4 MiB of dom0 address space)


def _batches(pfns):
    pfns = list(pfns)
    return [pfns[i:i + BATCH] for i in range(0, len(pfns), BATCH)]

