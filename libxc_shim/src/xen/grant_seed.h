/* grant_seed: grant entries written into another domain's grant table.
 *
 * A memory-server domain never runs code: the toolstack owns it, as libxl
 * owns the console and xenstore grants it seeds into every new guest.  Its
 * shared grant table (v1) is mapped with xenforeignmemory_map_resource and
 * the entries that grant its image pages to dom0 are written here, frame
 * and domid before flags, as a granting guest must. */
#ifndef GRANT_SEED_H
#define GRANT_SEED_H

#include <stdint.h>

/* Entries first_ref .. first_ref+n-1 grant gfns[i] to domid. */
void xen_shim_grant_seed(void *table, uint32_t first_ref, const uint64_t *gfns,
                         uint32_t n, uint16_t domid, int readonly);
/* Revoke them; returns how many were still in use (mapped) by the grantee. */
uint32_t xen_shim_grant_revoke(void *table, uint32_t first_ref, uint32_t n);

#endif
