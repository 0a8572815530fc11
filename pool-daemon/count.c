/*
 * ccgate-poold's own requests to the upstream, through the egress like a
 * CLI's, under a token that lives as long as the request (the daemon
 * holds no credential either; nginx adds it): token counts (POST
 * /v1/messages/count_tokens, under the tenant's name) and the upstream
 * account's checks (upstream.c, under the daemon's own).  One HTTP/1.0
 * exchange on the egress socket, driven by the event loop (HTTP/1.0: the
 * answer ends with the connection, never chunked), its answer bounded.
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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
	size_t		 max;		/* the most of it kept */
	count_done_cb	 done;		/* a token count's frame */
	count_answer_cb	 answer;	/* or the bare answer */
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
 * The value of header name in head (the answer's status line and
 * headers, NUL-terminated), trimmed, into out; 0 if it is there.
 */
int
count_header(const char *head, const char *name, char *out, size_t len)
{
	const char	*l, *v, *e;
	size_t		 nlen = strlen(name), vlen;

	if (len == 0)
		return (-1);
	for (l = strstr(head, "\r\n"); l != NULL; l = strstr(l, "\r\n")) {
		l += 2;
		if (strncasecmp(l, name, nlen) != 0 || l[nlen] != ':')
			continue;
		v = l + nlen + 1;
		v += strspn(v, " \t");
		if ((e = strstr(v, "\r\n")) == NULL)
			e = v + strlen(v);
		while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		vlen = (size_t)(e - v) < len - 1 ? (size_t)(e - v) : len - 1;
		memcpy(out, v, vlen);
		out[vlen] = '\0';
		return (0);
	}
	return (-1);
}

/*
 * The answer: the HTTP status, its headers and body, for answer; or for
 * done the status and the JSON body (a status of 0 and a message when
 * the egress answered nothing usable).
 */
static void
count_finish(struct count *q)
{
	json_t		*body = NULL, *f;
	char		*hdr_end = NULL;
	int		 status = 0;

	if (q->inlen > 12 && strncmp(q->in, "HTTP/1.", 7) == 0)
		status = (int)strtol(q->in + 9, NULL, 10);
	if (q->in != NULL)
		hdr_end = memmem(q->in, q->inlen, "\r\n\r\n", 4);
	if (q->answer != NULL) {
		if (status < 100 || status > 599 || hdr_end == NULL)
			q->answer(q->arg, 0, "", "", 0);
		else {
			hdr_end[2] = '\0';	/* the head ends with its CRLF */
			q->answer(q->arg, status, q->in, hdr_end + 4,
			    q->inlen - (size_t)(hdr_end + 4 - q->in));
		}
		count_free(q);
		return;
	}
	if (hdr_end != NULL)
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
		if (n <= 0 || q->inlen + (size_t)n > q->max)
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
 * Send body (JSON) to path on the egress under a new token for tenant
 * (EGRESS_SELF: the daemon's own), and keep at most max bytes of the
 * answer.  Returns the exchange, or NULL with *code and *cause set.
 */
static struct count *
count_request(const char *tenant, const char *path, json_t *body,
    size_t max, const char **code, char **cause)
{
	struct poold_config	*cf = poold->cf;
	struct sockaddr_un	 sun;
	struct count		*q;
	char			*json = NULL;
	int			 n, oauth;

	*code = PROTO_E_INTERNAL;
	/* The daemon's check carries the token as the pool's CLIs do. */
	oauth = cf->egress_oauth && strcmp(tenant, EGRESS_SELF) == 0;
	if (cf->egress_socket == NULL) {
		*code = PROTO_E_UNAVAILABLE;
		*cause = strdup(strcmp(tenant, EGRESS_SELF) == 0 ?
		    "the upstream account's checks need the egress "
		    "(egress_socket)" : "token counts need the egress "
		    "(egress_socket)");
		return (NULL);
	}
	if ((q = calloc(1, sizeof *q)) == NULL) {
		*cause = strdup("out of memory");
		return (NULL);
	}
	q->fd = -1;
	q->max = max;
	if (egress_issue(cf->state_dir, tenant, q->token, cause) != 0)
		goto fail;
	if ((json = json_dumps(body, JSON_COMPACT)) == NULL ||
	    (n = asprintf(&q->out, "POST %s HTTP/1.0\r\n"
	    "Host: ccgate-egress\r\nContent-Type: application/json\r\n"
	    "anthropic-version: 2023-06-01\r\n%s%s%s\r\n"
	    "Content-Length: %zu\r\n\r\n%s", path, oauth ?
	    "anthropic-beta: oauth-2025-04-20\r\n" : "", oauth ?
	    "Authorization: Bearer ccgate-egress-" : "x-api-key: ccgate-egress-",
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
	struct count	*q;

	if ((q = count_request(tenant, "/v1/messages/count_tokens", body,
	    COUNT_MAX_ANSWER, code, cause)) == NULL)
		return (NULL);
	q->done = done;
	q->arg = arg;
	return (q);
}

/*
 * Send body to the Messages API as the daemon itself (the upstream
 * account's check): answer gets the status (0: no usable answer), the
 * head (status line and headers) and the body, of at most max bytes in
 * all; then the exchange is over (count_cancel stops it first).  Returns
 * the exchange, or NULL with *cause set.
 */
struct count *
count_message(json_t *body, size_t max, count_answer_cb answer, void *arg,
    char **cause)
{
	struct count	*q;
	const char	*code;

	if ((q = count_request(EGRESS_SELF, "/v1/messages", body, max, &code,
	    cause)) == NULL)
		return (NULL);
	q->answer = answer;
	q->arg = arg;
	return (q);
}
