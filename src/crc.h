/*
 * crc.h: CRC-32 (IEEE 802.3, reflected: the crc of zlib, gzip and FCW2).
 *
 * crc_update(0, p, n) is the crc of p; crc_update(crc_update(0, a, n), b, m)
 * is the crc of a followed by b. Computed with ISA-L's carry-less multiply
 * code when the build found it (configure --without-isal to leave it out),
 * else with zlib. Every FCW2 crc goes through crc_update.
 */
#ifndef WALRELAY_CRC_H
#define WALRELAY_CRC_H

#include <stddef.h>
#include <stdint.h>

uint32_t	 crc_update(uint32_t crc, const void *p, size_t len);
/* the crc of any bytes followed by their own crc (little-endian) */
#define CRC_RESIDUE	0x2144df1cU
/* "ISA-L" or "zlib": the implementation crc_update uses */
const char	*crc_impl(void);

/* Each implementation on its own, for the tests and the benchmark. */
uint32_t	 crc_update_zlib(uint32_t crc, const void *p, size_t len);
#ifdef HAVE_ISAL
uint32_t	 crc_update_isal(uint32_t crc, const void *p, size_t len);
#endif

#endif
