/*
 * jsinspect: print every message of a JetStream stream, one line each:
 *   <jetstream seq> <Walrelay-Seq> <Walrelay-Epoch> <payload bytes> <crc32>
 * for the integration tests (what JetStream holds, through libnats).
 * usage: jsinspect URL[,URL...] STREAM
 */
#include "autoconfig.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>
#include <zlib.h>

static void
die(const char *what, natsStatus s)
{
	natsStatus ls;
	const char *e = nats_GetLastError(&ls);

	fprintf(stderr, "jsinspect: %s: %s\n", what, e != NULL && *e ? e :
	    natsStatus_GetText(s));
	exit(1);
}

int
main(int argc, char **argv)
{
	natsConnection *nc = NULL;
	natsOptions *o = NULL;
	natsSubscription *sub = NULL;
	jsCtx *js = NULL;
	jsStreamInfo *si = NULL;
	jsSubOptions so;
	natsMsg *m;
	jsMsgMetaData *meta;
	natsStatus s;
	const char *urls[16], *seq, *epoch;
	char subject[128], *list, *p, *save = NULL;
	uint64_t last, n = 0;
	int nurls = 0;

	if (argc != 3) {
		fprintf(stderr, "usage: jsinspect URL[,URL...] STREAM\n");
		return 2;
	}
	list = strdup(argv[1]);
	for (p = strtok_r(list, ",", &save); p != NULL && nurls < 16;
	    p = strtok_r(NULL, ",", &save))
		urls[nurls++] = p;
	snprintf(subject, sizeof(subject), "walrelay.%s", argv[2]);
	if ((s = natsOptions_Create(&o)) != NATS_OK ||
	    (s = natsOptions_SetServers(o, urls, nurls)) != NATS_OK)
		die("options", s);
	if ((s = natsConnection_Connect(&nc, o)) != NATS_OK)
		die("connect", s);
	if ((s = natsConnection_JetStream(&js, nc, NULL)) != NATS_OK)
		die("jetstream", s);
	if ((s = js_GetStreamInfo(&si, js, argv[2], NULL, NULL)) != NATS_OK)
		die("stream info", s);
	last = si->State.LastSeq;
	fprintf(stderr, "jsinspect: stream %s: %" PRIu64 " messages, %" PRIu64
	    " to %" PRIu64 "\n", argv[2], si->State.Msgs, si->State.FirstSeq,
	    last);
	jsStreamInfo_Destroy(si);
	if (last > 0) {
		jsSubOptions_Init(&so);
		so.Stream = argv[2];
		so.Ordered = true;
		if ((s = js_SubscribeSync(&sub, js, subject, NULL, &so,
		    NULL)) != NATS_OK)
			die("subscribe", s);
		for (;;) {
			if ((s = natsSubscription_NextMsg(&m, sub, 10000)) !=
			    NATS_OK)
				die("next message", s);
			if ((s = natsMsg_GetMetaData(&meta, m)) != NATS_OK)
				die("message metadata", s);
			if (natsMsgHeader_Get(m, "Walrelay-Seq", &seq) !=
			    NATS_OK)
				seq = "-";
			if (natsMsgHeader_Get(m, "Walrelay-Epoch", &epoch) !=
			    NATS_OK)
				epoch = "-";
			printf("%" PRIu64 " %s %s %d %lu\n",
			    meta->Sequence.Stream, seq, epoch,
			    natsMsg_GetDataLength(m), crc32(0,
			    (const unsigned char *)natsMsg_GetData(m),
			    (unsigned)natsMsg_GetDataLength(m)));
			n++;
			if (meta->Sequence.Stream >= last) {
				jsMsgMetaData_Destroy(meta);
				natsMsg_Destroy(m);
				break;
			}
			jsMsgMetaData_Destroy(meta);
			natsMsg_Destroy(m);
		}
		natsSubscription_Destroy(sub);
	}
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	natsOptions_Destroy(o);
	free(list);
	nats_Close();
	return 0;
}
