/*
 * http.h: /metrics (Prometheus text), /healthz, /readyz, /v1/status (JSON).
 */
#ifndef WALRELAY_HTTP_H
#define WALRELAY_HTTP_H

#include <stddef.h>

struct http_server;

struct http_server	*http_new(const char *addr, char *errbuf, size_t errlen);
void			 http_free(struct http_server *);

#endif
