/*
 * The daemon's unix socket and its clients.  A client sends one frame: a
 * job (then reads events until done or error) or a control message (then
 * reads one answer).  A client that sends a bad frame is answered with an
 * error and dropped; a client that goes away cancels its job.
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "poold.h"

#define CLIENT_OUT_MAX	(16 * 1024 * 1024)

struct client {
	int			 fd;
	struct loop_io		 io;
	struct proto_reader	 rd;
	uint8_t			*out;
	size_t			 outlen;
	size_t			 outoff;
	struct job		*job;
	struct count		*count;		/* a token count it waits for */
	int			 seen_frame;
	int			 closing;
	int			 in_cb;
	int			 dead;
	uint64_t		 handed_us;	/* last frame to the kernel */
	TAILQ_ENTRY(client)	 entry;
};
TAILQ_HEAD(clients, client);

static struct clients	clients = TAILQ_HEAD_INITIALIZER(clients);

static void	client_io_cb(struct loop_io *, uint32_t);
static void	client_reject(struct client *, const char *, const char *);

/*
 * Create the listening socket.  Refuses to start if another daemon
 * answers there; a stale socket file is replaced.  The socket is bound
 * under a umask so that it is never briefly open to all.
 */
int
server_listen(const char *path, mode_t mode, const char *group, char **cause)
{
	struct sockaddr_un	 sa;
	struct group		*gr;
	mode_t			 old;
	int			 fd, probe;

	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sa.sun_path) {
		util_cause(cause, "socket path too long: %s", path);
		return (-1);
	}
	strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);

	probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe == -1) {
		util_cause(cause, "socket: %s", strerror(errno));
		return (-1);
	}
	if (connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0) {
		close(probe);
		util_cause(cause, "another ccgate-poold is running on %s",
		    path);
		return (-1);
	}
	close(probe);
	if (unlink(path) == -1 && errno != ENOENT) {
		util_cause(cause, "unlink %s: %s", path, strerror(errno));
		return (-1);
	}

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd == -1) {
		util_cause(cause, "socket: %s", strerror(errno));
		return (-1);
	}
	old = umask(0177);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
		umask(old);
		util_cause(cause, "bind %s: %s", path, strerror(errno));
		close(fd);
		return (-1);
	}
	umask(old);
	if (group != NULL && *group != '\0') {
		if ((gr = getgrnam(group)) == NULL) {
			util_cause(cause, "unknown group %s", group);
			close(fd);
			return (-1);
		}
		if (chown(path, (uid_t)-1, gr->gr_gid) == -1) {
			util_cause(cause, "chown %s: %s", path,
			    strerror(errno));
			close(fd);
			return (-1);
		}
	}
	if (chmod(path, mode) == -1 || listen(fd, 1024) == -1) {
		util_cause(cause, "listen %s: %s", path, strerror(errno));
		close(fd);
		return (-1);
	}
	return (fd);
}

/* Free a client; its job, if any, is cancelled. */
static void
client_free(struct client *c)
{
	struct job	*job = c->job;

	if (job != NULL) {
		c->job = NULL;
		pool_cancel(job);
	}
	if (c->count != NULL)
		count_cancel(c->count);
	TAILQ_REMOVE(&clients, c, entry);
	loop_del(poold->loop, &c->io);
	close(c->fd);
	proto_reader_free(&c->rd);
	free(c->out);
	free(c);
}

/* Free the client if it is finished and everything was written. */
static void
client_maybe_close(struct client *c)
{
	if (c->in_cb)
		return;
	if (c->dead || (c->closing && c->outoff == c->outlen))
		client_free(c);
}

/* Write what is pending; watch for EPOLLOUT while anything remains. */
static int
client_flush(struct client *c)
{
	ssize_t	n;

	while (c->outoff < c->outlen) {
		n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
		    MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			break;
		if (n == -1)
			return (-1);
		c->outoff += (size_t)n;
	}
	if (c->outoff == c->outlen) {
		c->outoff = c->outlen = 0;
		return (loop_mod(poold->loop, &c->io, EPOLLIN | EPOLLRDHUP));
	}
	return (loop_mod(poold->loop, &c->io, EPOLLIN | EPOLLRDHUP | EPOLLOUT));
}

/*
 * Queue a frame for the client.  Returns -1 if the client is gone or too
 * slow (more than CLIENT_OUT_MAX pending): the caller cancels its job.
 */
static int
client_send(struct client *c, json_t *frame)
{
	uint8_t	*buf, *nb;
	size_t	 len;
	char	*cause = NULL;

	if (c == NULL || c->dead)
		return (-1);
	if (proto_encode(frame, (size_t)poold->cf->max_frame, &buf, &len,
	    &cause) != 0) {
		log_warnx("encode frame: %s", cause);
		free(cause);
		return (-1);
	}
	if (c->outoff > 0) {
		memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
		c->outlen -= c->outoff;
		c->outoff = 0;
	}
	if (c->outlen + len > CLIENT_OUT_MAX ||
	    (nb = realloc(c->out, c->outlen + len)) == NULL) {
		free(buf);
		c->dead = 1;
		return (-1);
	}
	c->out = nb;
	memcpy(c->out + c->outlen, buf, len);
	c->outlen += len;
	free(buf);
	c->handed_us = util_now_us();
	if (client_flush(c) != 0) {
		c->dead = 1;
		return (-1);
	}
	return (0);
}

/* The client's job sink (struct job_sink): its job's frames. */

/* Attach a job to its client; it stays until the job is finished. */
static void
client_sink_started(void *arg, struct job *job)
{
	struct client	*c = arg;

	c->job = job;
}

static int
client_sink_send(void *arg, json_t *frame)
{
	return (client_send(arg, frame));
}

/* The client's job is over: close once the last frame is written. */
static void
client_sink_finished(void *arg)
{
	struct client	*c = arg;

	c->job = NULL;
	c->closing = 1;
	client_maybe_close(c);
}

/*
 * When client_send last handed a frame to the kernel: the moment the
 * daemon's part in delivering it ended, whenever the scheduler next runs
 * the daemon.
 */
static uint64_t
client_sink_handed_us(void *arg)
{
	struct client	*c = arg;

	return (c->handed_us);
}

static const struct job_sink client_sink = {
	client_sink_started, client_sink_send, client_sink_finished,
	client_sink_handed_us
};

/*
 * Send frame with descriptor fd attached (SCM_RIGHTS, on its first byte),
 * then close.  The frame is the connection's only one: what the socket
 * does not take at once is queued as usual.  fd is closed here.
 */
static void
client_send_fd(struct client *c, json_t *frame, int fd)
{
	struct msghdr	 mh;
	struct iovec	 iov;
	struct cmsghdr	*cm;
	union {
		char		buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr	align;
	} u;
	uint8_t		*buf;
	size_t		 len;
	ssize_t		 n;
	char		*cause = NULL;

	c->closing = 1;
	if (c->outlen != 0 || proto_encode(frame,
	    (size_t)poold->cf->max_frame, &buf, &len, &cause) != 0) {
		free(cause);
		close(fd);
		c->dead = 1;
		return;
	}
	memset(&mh, 0, sizeof mh);
	memset(&u, 0, sizeof u);
	iov.iov_base = buf;
	iov.iov_len = len;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = u.buf;
	mh.msg_controllen = sizeof u.buf;
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof fd);
	do
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
	while (n == -1 && errno == EINTR);
	close(fd);
	if (n <= 0) {
		free(buf);
		c->dead = 1;
		return;
	}
	if ((size_t)n < len) {
		free(c->out);
		c->out = buf;
		c->outlen = len;
		c->outoff = (size_t)n;
		if (client_flush(c) != 0)
			c->dead = 1;
		return;
	}
	free(buf);
}

/* A files message (files.c): its answer, with a descriptor or not. */
static void
client_files(struct client *c, json_t *msg)
{
	json_t	*f;
	int	 fd;

	if ((f = files_handle(msg, &fd)) == NULL) {
		if (fd != -1)
			close(fd);
		client_reject(c, PROTO_E_INTERNAL, "out of memory");
		return;
	}
	if (fd != -1)
		client_send_fd(c, f, fd);
	else {
		(void)client_send(c, f);
		c->closing = 1;
	}
	json_decref(f);
}

/* Send an error frame and close. */
static void
client_reject(struct client *c, const char *code, const char *message)
{
	json_t	*f = proto_new(PROTO_ERROR);

	if (f != NULL) {
		json_object_set_new(f, "code", json_string(code));
		json_object_set_new(f, "message", json_string(message));
		(void)client_send(c, f);
		json_decref(f);
	}
	c->closing = 1;
}

/* Send an "ok" frame, with extra members, and close. */
static void
client_ok(struct client *c, json_t *extra)
{
	json_t	*f = proto_new(PROTO_OK);

	if (f != NULL) {
		if (extra != NULL)
			json_object_update(f, extra);
		(void)client_send(c, f);
		json_decref(f);
	}
	json_decref(extra);
	c->closing = 1;
}

/* The answer to the client's token count: send it and close. */
static void
client_count_done(void *arg, json_t *frame)
{
	struct client	*c = arg;

	c->count = NULL;
	if (frame == NULL)
		client_reject(c, PROTO_E_INTERNAL, "out of memory");
	else {
		(void)client_send(c, frame);
		c->closing = 1;
	}
	client_maybe_close(c);
}

/*
 * {"type":"count_tokens","tenant","body"}: the upstream's count of body's
 * input tokens (count.c), answered {"type":"count","status","body"}.
 */
static void
client_count(struct client *c, json_t *msg)
{
	const char	*tenant = json_string_value(json_object_get(msg,
			    "tenant"));
	json_t		*body = json_object_get(msg, "body");
	const char	*code;
	char		*cause = NULL;

	if (tenant == NULL || !util_valid_tenant(tenant) ||
	    !json_is_object(body)) {
		client_reject(c, PROTO_E_BAD_REQUEST, "count_tokens: tenant and "
		    "body are required");
		return;
	}
	if ((c->count = count_start(tenant, body, client_count_done, c, &code,
	    &cause)) == NULL) {
		client_reject(c, code, cause != NULL ? cause : "out of memory");
		free(cause);
	}
}

/* Handle the client's one frame. */
static void
client_frame(struct client *c, json_t *msg)
{
	const char	*type = proto_type(msg);
	char		*cause = NULL;
	json_t		*f;
	int		 n;

	if (c->seen_frame) {
		client_reject(c, PROTO_E_BAD_REQUEST, "one frame per connection");
		if (c->job != NULL) {
			struct job	*job = c->job;

			c->job = NULL;
			pool_cancel(job);
		}
		return;
	}
	c->seen_frame = 1;
	if (strcmp(type, PROTO_JOB) == 0) {
		if (pool_submit(&client_sink, c, msg, &cause) != 0) {
			client_reject(c, PROTO_E_BAD_REQUEST, cause);
			free(cause);
		}
		return;
	}
	if (strcmp(type, PROTO_STATS) == 0) {
		if ((f = pool_stats()) == NULL)
			client_reject(c, PROTO_E_INTERNAL, "out of memory");
		else {
			(void)client_send(c, f);
			json_decref(f);
			c->closing = 1;
		}
	} else if (strcmp(type, PROTO_SET_LIMITS) == 0) {
		if (pool_set_limits(msg, &cause) != 0) {
			client_reject(c, PROTO_E_BAD_REQUEST, cause);
			free(cause);
		} else
			client_ok(c, json_pack("{s:I, s:I}", "min_instances",
			    (json_int_t)poold->cf->min_instances,
			    "max_instances",
			    (json_int_t)poold->cf->max_instances));
	} else if (strcmp(type, PROTO_DRAIN) == 0) {
		poold->draining = !json_is_false(json_object_get(msg, "on"));
		log_info("drain %s", poold->draining ? "on" : "off");
		if (!poold->draining)
			pool_dispatch();
		client_ok(c, json_pack("{s:b, s:b}", "draining",
		    poold->draining, "idle", pool_idle()));
	} else if (strcmp(type, PROTO_DELETE) == 0) {
		if ((n = pool_delete(msg, &cause)) < 0) {
			client_reject(c, PROTO_E_BAD_REQUEST, cause);
			free(cause);
		} else
			client_ok(c, json_pack("{s:i}", "removed", n));
	} else if (strcmp(type, PROTO_COUNT_TOKENS) == 0) {
		client_count(c, msg);
	} else if (files_type(type)) {
		client_files(c, msg);
	} else if (strcmp(type, PROTO_TENANT_PURGE) == 0) {
		if ((n = pool_purge(msg, &cause)) < 0) {
			client_reject(c, PROTO_E_BAD_REQUEST, cause);
			free(cause);
		} else
			client_ok(c, json_pack("{s:b}", "removed", n > 0));
	} else if (strcmp(type, PROTO_PING) == 0) {
		client_ok(c, json_pack("{s:s, s:b, s:i, s:s}", "version",
		    PACKAGE_VERSION, "draining", poold->draining, "processes",
		    poold->nprocs, "upstream", upstream_state_name(
		    poold->upstream.state)));
	} else
		client_reject(c, PROTO_E_BAD_REQUEST, "unknown message type");
}

/* Read, decode and handle frames; notice a peer that went away. */
static void
client_io_cb(struct loop_io *io, uint32_t events)
{
	struct client	*c = io->arg;
	uint8_t		 buf[65536];
	json_t		*msg;
	char		*cause = NULL;
	ssize_t		 n;
	int		 r, gone = 0;

	c->in_cb = 1;
	if (events & EPOLLOUT) {
		if (client_flush(c) != 0)
			c->dead = 1;
	}
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) {
		n = read(c->fd, buf, sizeof buf);
		if (n == 0 || (n == -1 && errno != EINTR && errno != EAGAIN))
			gone = 1;
		else if (n > 0 && !c->closing) {
			if (proto_reader_feed(&c->rd, buf, (size_t)n) != 0) {
				client_reject(c, PROTO_E_BAD_REQUEST,
				    "frame too large");
			} else {
				while (!c->closing && (r = proto_reader_next(
				    &c->rd, &msg, &cause)) != 0) {
					if (r == -1) {
						client_reject(c,
						    PROTO_E_BAD_REQUEST, cause);
						free(cause);
						cause = NULL;
						break;
					}
					client_frame(c, msg);
					json_decref(msg);
				}
			}
		}
	}
	c->in_cb = 0;
	if (gone)
		client_free(c);
	else
		client_maybe_close(c);
}

/* Accept new clients. */
void
server_accept_cb(struct loop_io *io, uint32_t events)
{
	struct client	*c;
	int		 fd;

	for (;;) {
		fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno != EAGAIN && errno != EINTR &&
			    errno != ECONNABORTED)
				log_warn("accept");
			return;
		}
		if ((c = calloc(1, sizeof *c)) == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		proto_reader_init(&c->rd, (size_t)poold->cf->max_frame);
		if (loop_add(poold->loop, &c->io, fd, EPOLLIN | EPOLLRDHUP,
		    client_io_cb, c) == -1) {
			log_warn("watch client");
			close(fd);
			free(c);
			continue;
		}
		TAILQ_INSERT_TAIL(&clients, c, entry);
	}
}

/* Drop every client (at exit). */
void
server_close_all(void)
{
	struct client	*c;

	while ((c = TAILQ_FIRST(&clients)) != NULL)
		client_free(c);
}

