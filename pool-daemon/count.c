/*
 * Token counts (POST /v1/messages/count_tokens): the upstream's own,
 * asked through the egress like a CLI's requests, under a token of the
 * tenant's that lives as long as the question.  The daemon holds no
 * credential either; nginx adds it.  One HTTP/1.0 exchange on the egress
 * socket, driven by the event loop (HTTP/1.0: the answer ends with the
 * connection, never chunked).
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "poold.h"

#define COUNT_MAX_ANSWER	(1024 * 1024)

struct count {
	struct loop_io	 io;
	int		 fd;
	char		 token[EGRESS_TOKEN_HEX + 1];
	char		*out;		/* the request */
	size_t		 outlen, outoff;
	char		*in;		/* the answer so far */
	size_t		 inlen;
	count_done_cb	 done;
	void		*arg;
};

static void	count_io_cb(struct loop_io *, uint32_t);

/* Free a question: its socket and its token. */
static void
count_free(struct count *q)
{
	if (q->fd != -1) {
		loop_del(poold->loop, &q->io);
		close(q->fd);
	}
	if (q->token[0] != '\0')
		egress_revoke(poold->cf->state_dir, q->token);
	free(q->out);
	free(q->in);
	free(q);
}

/* Stop a question whose client went away: no answer will come. */
void
count_cancel(struct count *q)
{
	count_free(q);
}

/*
 * The answer: the HTTP status and the JSON body, for done (a status of 0
 * and a message when the egress answered nothing usable).
 */
static void
count_finish(struct count *q)
{
	json_t		*body = NULL, *f;
	const char	*hdr_end;
	int		 status = 0;

	if (q->inlen > 12 && strncmp(q->in, "HTTP/1.", 7) == 0)
		status = (int)strtol(q->in + 9, NULL, 10);
	if ((hdr_end = memmem(q->in, q->inlen, "\r\n\r\n", 4)) != NULL)
		body = json_loadb(hdr_end + 4, q->inlen -
		    (size_t)(hdr_end + 4 - q->in), 0, NULL);
	if (status < 100 || status > 599 || !json_is_object(body)) {
		json_decref(body);
		f = json_pack("{s:i, s:s, s:s, s:s}", "v", PROTO_VERSION,
		    "type", PROTO_ERROR, "code", PROTO_E_UPSTREAM, "message",
		    "the egress gave no usable answer");
	} else
		f = json_pack("{s:i, s:s, s:i, s:o}", "v", PROTO_VERSION,
		    "type", PROTO_COUNT, "status", status, "body", body);
	q->done(q->arg, f);
	json_decref(f);
	count_free(q);
}

/* Write the request, then read the answer to its end. */
static void
count_io_cb(struct loop_io *io, uint32_t events)
{
	struct count	*q = io->arg;
	char		 buf[16384], *nb;
	ssize_t		 n;

	if (q->outoff < q->outlen && (events & (EPOLLOUT | EPOLLERR))) {
		n = send(q->fd, q->out + q->outoff, q->outlen - q->outoff,
		    MSG_NOSIGNAL);
		if (n == -1 && errno != EAGAIN && errno != EINTR) {
			count_finish(q);
			return;
		}
		if (n > 0)
			q->outoff += (size_t)n;
		if (q->outoff == q->outlen &&
		    loop_mod(poold->loop, &q->io, EPOLLIN | EPOLLRDHUP) != 0) {
			count_finish(q);
			return;
		}
	}
	if (!(events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)))
		return;
	for (;;) {
		n = read(q->fd, buf, sizeof buf);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		if (n <= 0 || q->inlen + (size_t)n > COUNT_MAX_ANSWER)
			break;
		if ((nb = realloc(q->in, q->inlen + (size_t)n + 1)) == NULL)
			break;
		q->in = nb;
		memcpy(q->in + q->inlen, buf, (size_t)n);
		q->inlen += (size_t)n;
		q->in[q->inlen] = '\0';
	}
	count_finish(q);
}

/*
 * Ask the upstream how many input tokens body (a count_tokens request,
 * already checked by ccgate-fcgi) makes, for tenant.  done gets the
 * answer frame (then the question is over); count_cancel stops it first.
 * Returns the question, or NULL with *code and *cause set.
 */
struct count *
count_start(const char *tenant, json_t *body, count_done_cb done, void *arg,
    const char **code, char **cause)
{
	struct poold_config	*cf = poold->cf;
	struct sockaddr_un	 sun;
	struct count		*q;
	char			*json = NULL;
	int			 n;

	*code = PROTO_E_INTERNAL;
	if (cf->egress_socket == NULL) {
		*code = PROTO_E_UNAVAILABLE;
		*cause = strdup("token counts need the egress (egress_socket)");
		return (NULL);
	}
	if ((q = calloc(1, sizeof *q)) == NULL) {
		*cause = strdup("out of memory");
		return (NULL);
	}
	q->fd = -1;
	q->done = done;
	q->arg = arg;
	if (egress_issue(cf->state_dir, tenant, q->token, cause) != 0)
		goto fail;
	if ((json = json_dumps(body, JSON_COMPACT)) == NULL ||
	    (n = asprintf(&q->out, "POST /v1/messages/count_tokens HTTP/1.0\r\n"
	    "Host: ccgate-egress\r\nContent-Type: application/json\r\n"
	    "anthropic-version: 2023-06-01\r\n"
	    "x-api-key: ccgate-egress-%s\r\nContent-Length: %zu\r\n\r\n%s",
	    q->token, strlen(json), json)) == -1) {
		q->out = NULL;
		*cause = strdup("out of memory");
		goto fail;
	}
	free(json);
	json = NULL;
	q->outlen = (size_t)n;
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	if (strlen(cf->egress_socket) >= sizeof sun.sun_path) {
		*cause = strdup("egress_socket: path too long");
		goto fail;
	}
	memcpy(sun.sun_path, cf->egress_socket, strlen(cf->egress_socket));
	if ((q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) == -1 ||
	    connect(q->fd, (struct sockaddr *)&sun, sizeof sun) == -1) {
		*code = PROTO_E_UNAVAILABLE;
		util_cause(cause, "egress %s: %s", cf->egress_socket,
		    strerror(errno));
		if (q->fd != -1)
			close(q->fd);
		q->fd = -1;
		goto fail;
	}
	if (loop_add(poold->loop, &q->io, q->fd, EPOLLOUT | EPOLLIN |
	    EPOLLRDHUP, count_io_cb, q) != 0) {
		close(q->fd);
		q->fd = -1;
		*cause = strdup("cannot watch the egress socket");
		goto fail;
	}
	return (q);
fail:
	free(json);
	count_free(q);
	return (NULL);
}
