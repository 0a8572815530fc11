/*
 * The transports' side of a request: what fcgi.c, ws.c and the tests
 * need.
 */
#ifndef CCGATE_REQUEST_H
#define CCGATE_REQUEST_H

#include <stddef.h>

#include <fcgiapp.h>
#include <jansson.h>

struct request;

/* Where a WebSocket turn's events go (ws.c). */
struct req_sink {
	/* One event (JSON text); -1 if the client is gone. */
	int	(*send)(void *, const char *);
	/* 1 while the client is there. */
	int	(*alive)(void *);
	void	*arg;
};

void	req_handle(FCGX_Request *);
int	req_fd(struct request *);
int	req_json_depth_ok(const char *, size_t, long);
int	req_client_id_ok(const char *);
struct request	*req_sub(struct request *, int);
json_t		*req_sub_take(struct request *, long long *, long long *,
		    double *);
int		 req_frame_run(const struct req_sink *, char **, int,
		    const char *, json_t *);

#endif
