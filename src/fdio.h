/*
 * fdio.h: whole-buffer reads and writes on a file descriptor.
 *
 * Each call retries on EINTR and on short transfers until every byte is
 * moved; on failure it returns -1 with errno set for the caller's message.
 */
#ifndef WALRELAY_FDIO_H
#define WALRELAY_FDIO_H

#include <stddef.h>
#include <stdint.h>

int	fdio_write_all(int fd, const void *buf, size_t len);
int	fdio_pread_all(int fd, void *buf, size_t len, uint64_t off);
int	fdio_send_all(int fd, const void *buf, size_t len, size_t *done);

#endif
