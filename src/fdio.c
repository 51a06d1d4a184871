/*
 * fdio.c: write, pread and send until the whole buffer is moved.
 */
#include "autoconfig.h"

#include <sys/types.h>
#include <sys/socket.h>

#include <errno.h>
#include <unistd.h>

#include "fdio.h"

/* All of buf to fd. A write that moves nothing is EIO. */
int
fdio_write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	ssize_t n;

	while (len > 0) {
		if ((n = write(fd, p, len)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* len bytes of fd from off. The end of the file before them is EIO. */
int
fdio_pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	ssize_t n;

	while (len > 0) {
		if ((n = pread(fd, p, len, (off_t)off)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/*
 * All of buf to the socket fd, without SIGPIPE. done (if not NULL) is set
 * to the bytes sent, also when it fails part way.
 */
int
fdio_send_all(int fd, const void *buf, size_t len, size_t *done)
{
	const uint8_t *p = buf;
	size_t off = 0;
	ssize_t n;

	while (off < len) {
		n = send(fd, p + off, len - off, MSG_NOSIGNAL);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (done != NULL)
				*done = off;
			return -1;
		}
		off += (size_t)n;
	}
	if (done != NULL)
		*done = off;
	return 0;
}
