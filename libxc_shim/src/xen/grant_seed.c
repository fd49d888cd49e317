/* See grant_seed.h. */
#include <xenctrl.h>          /* xen_wmb */
#include <xen/grant_table.h>
#include "grant_seed.h"

void xen_shim_grant_seed(void *table, uint32_t first_ref, const uint64_t *gfns,
                         uint32_t n, uint16_t domid, int readonly)
{
    grant_entry_v1_t *e = (grant_entry_v1_t *)table + first_ref;
    uint16_t flags = GTF_permit_access | (readonly ? GTF_readonly : 0);

    for ( uint32_t i = 0; i < n; i++ )
    {
        e[i].domid = domid;
        e[i].frame = (uint32_t)gfns[i];
    }
    xen_wmb();    /* Xen must see frame and domid before the entry is live */
    for ( uint32_t i = 0; i < n; i++ )
        e[i].flags = flags;
}

uint32_t xen_shim_grant_revoke(void *table, uint32_t first_ref, uint32_t n)
{
    grant_entry_v1_t *e = (grant_entry_v1_t *)table + first_ref;
    uint32_t busy = 0;

    for ( uint32_t i = 0; i < n; i++ )
    {
        volatile uint16_t *flags = &e[i].flags;
        busy += (*flags & (GTF_reading | GTF_writing)) != 0;
        *flags = 0;
    }
    return busy;
}
