/*
 * ccgate-fcgi: the FastCGI application.  A fixed set of worker threads
 * accept requests on one unix socket (mode 0660, for nginx's group only:
 * Debian 12's libfcgi is not fully patched for CVE-2025-23016, so nobody
 * else may write to it).  The socket is either its own or one systemd
 * passes (socket activation, ccgate-fcgi.socket): then connections made
 * while the service restarts wait in the socket's backlog for the next
 * process instead of failing.  One thread waits for signals; on SIGTERM
 * the workers stop accepting, finish what they hold and return, leaving
 * whatever is still in the backlog to the next process.
 *
 * Usage: ccgate-fcgi [-nv] [-f config]
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fcgiapp.h>
#include <mysql.h>
#include <systemd/sd-daemon.h>

#include "front.h"
#include "http.h"
#include "log.h"

static int		listen_fd = -1;
static int		listen_inherited;	/* systemd's: leave it be */
static int		stop_pipe[2] = { -1, -1 };	/* readable: stop */
static pthread_mutex_t	accept_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * The FastCGI transport of a request (http.h): the FCGX_Request is its
 * argument.  nginx gets an answer's head and body in one buffer; a
 * stream's writes go out at each flush.
 */
static ssize_t
fcgi_read(void *arg, char *buf, size_t len)
{
	FCGX_Request	*fx = arg;
	int		 n;

	if (len > INT_MAX)
		len = INT_MAX;
	n = FCGX_GetStr(buf, (int)len, fx->in);
	return (n < 0 ? -1 : n);
}

/* The status line and headers. */
static void
fcgi_head(FCGX_Request *fx, const struct req_reply *rp)
{
	FCGX_FPrintF(fx->out, "Status: %d\r\n", rp->status);
	if (rp->ctype != NULL)
		FCGX_FPrintF(fx->out, "Content-Type: %s\r\n", rp->ctype);
	FCGX_FPrintF(fx->out, "X-Request-Id: %s\r\n%s\r\n", rp->id,
	    rp->headers);
}

static void
fcgi_json(void *arg, const struct req_reply *rp, json_t *body)
{
	FCGX_Request		*fx = arg;
	struct req_reply	 oom;
	char			*s;

	if (rp->ctype == NULL) {
		fcgi_head(fx, rp);
		return;
	}
	s = body != NULL ? req_json_dumps(body) : NULL;
	json_decref(body);
	if (s == NULL) {
		oom = *rp;
		oom.status = 500;
		fcgi_head(fx, &oom);
		FCGX_PutS("{\"success\":false,\"error\":{\"type\":\"api_error\","
		    "\"message\":\"out of memory\"}}\n", fx->out);
		return;
	}
	fcgi_head(fx, rp);
	FCGX_PutS(s, fx->out);
	FCGX_PutS("\n", fx->out);
	free(s);
}

static void
fcgi_text(void *arg, const struct req_reply *rp, const char *text)
{
	FCGX_Request	*fx = arg;

	fcgi_head(fx, rp);
	FCGX_PutS(text, fx->out);
}

/* Write what is buffered if flush; -1 once the connection failed. */
static int
fcgi_flush(FCGX_Request *fx, int flush)
{
	if (flush && FCGX_FFlush(fx->out) != 0)
		return (-1);
	return (FCGX_GetError(fx->out) == 0 ? 0 : -1);
}

static int
fcgi_stream(void *arg, const struct req_reply *rp, int flush)
{
	FCGX_Request	*fx = arg;

	FCGX_FPrintF(fx->out, "Status: %d\r\nContent-Type: %s\r\n"
	    "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
	    "X-Request-Id: %s\r\n%s\r\n", rp->status, rp->ctype, rp->id,
	    rp->headers);
	return (fcgi_flush(fx, flush));
}

static int
fcgi_event(void *arg, const char *name, const char *data, int flush)
{
	FCGX_Request	*fx = arg;

	if (name != NULL)
		FCGX_FPrintF(fx->out, "event: %s\ndata: %s\n\n", name, data);
	else if (data[0] == ':')
		FCGX_FPrintF(fx->out, "%s\n\n", data);
	else
		FCGX_FPrintF(fx->out, "data: %s\n\n", data);
	return (fcgi_flush(fx, flush));
}

static int
fcgi_fd(void *arg)
{
	FCGX_Request	*fx = arg;

	return (fx->ipcFd);
}

/* The answer goes out to nginx. */
static void
fcgi_finish(void *arg)
{
	FCGX_Finish_r(arg);
}

/* Raw bytes of an answer, its head first if rp; written out at once. */
static int
fcgi_raw(void *arg, const struct req_reply *rp, const char *buf, size_t len)
{
	FCGX_Request	*fx = arg;
	size_t		 n;

	if (rp != NULL)
		fcgi_head(fx, rp);
	while (len > 0) {
		n = len > INT_MAX ? INT_MAX : len;
		if (FCGX_PutStr(buf, (int)n, fx->out) != (int)n)
			return (-1);
		buf += n;
		len -= n;
	}
	return (fcgi_flush(fx, 1));
}

static const struct req_transport fcgi_transport = {
	fcgi_read, fcgi_json, fcgi_text, fcgi_stream, fcgi_event, fcgi_fd,
	fcgi_finish, fcgi_raw
};

/*
 * Wait until a connection is there, then accept it.  Returns -1 once the
 * stop pipe is readable: the listening socket is left as it is, so that
 * connections not yet accepted stay for the next process.
 */
static int
worker_accept(FCGX_Request *fx)
{
	struct pollfd	pfd[2];

	pfd[0].fd = stop_pipe[0];
	pfd[0].events = POLLIN;
	pfd[1].fd = listen_fd;
	pfd[1].events = POLLIN;
	for (;;) {
		if (poll(pfd, 2, -1) == -1) {
			if (errno == EINTR)
				continue;
			log_warn("poll");
			return (-1);
		}
		if (pfd[0].revents != 0)
			return (-1);
		if (pfd[1].revents & POLLIN)
			return (FCGX_Accept_r(fx));
		if (pfd[1].revents != 0) {
			log_warnx("listening socket failed");
			return (-1);
		}
	}
}

/* A worker: accept and handle requests until shutdown. */
static void *
worker_main(void *arg)
{
	FCGX_Request	 fx;
	int		 rc;

	if (FCGX_InitRequest(&fx, listen_fd, FCGI_FAIL_ACCEPT_ON_INTR) != 0) {
		log_warnx("FCGX_InitRequest failed");
		return (NULL);
	}
	for (;;) {
		pthread_mutex_lock(&accept_lock);
		rc = worker_accept(&fx);
		pthread_mutex_unlock(&accept_lock);
		if (rc < 0)
			break;
		req_serve(&http_routes, &fcgi_transport, &fx, fx.envp);
	}
	FCGX_Free(&fx, 1);
	db_release();
	return (NULL);
}

/*
 * The listening socket: the one systemd passes (sd_listen_fds(3)), which
 * its socket unit made with its own mode and group, else a new one at
 * appconf->listen with the configured mode and group.
 */
static int
open_listener(void)
{
	mode_t		 old;
	int		 fd, n;

	if ((n = sd_listen_fds(1)) < 0)
		fatalx("sd_listen_fds: %s", strerror(-n));
	if (n > 1)
		fatalx("systemd passed %d sockets; ccgate-fcgi takes one", n);
	if (n == 1) {
		fd = SD_LISTEN_FDS_START;
		if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0)
			fatalx("the socket systemd passed is not a listening "
			    "unix stream socket");
		listen_inherited = 1;
		return (fd);
	}

	if (unlink(appconf->listen) == -1 && errno != ENOENT)
		fatal("unlink %s", appconf->listen);
	old = umask(0177);
	fd = FCGX_OpenSocket(appconf->listen, 1024);
	umask(old);
	if (fd < 0)
		fatalx("cannot listen on %s", appconf->listen);
	front_socket_perms(appconf->listen);
	return (fd);
}

int
main(int argc, char **argv)
{
	pthread_t	*threads;
	sigset_t	 set;
	long		 i, n;
	int		 rc, warm;

	(void)front_start("ccgate-fcgi", argc, argv, &set);
	if (!appconf->have_admin_secret)
		log_warnx("no admin secret at %s: admin logins and tokens are "
		    "refused (503); make one with ccgate-admin secret",
		    appconf->admin_secret_file);
	if (FCGX_Init() != 0)
		fatalx("FCGX_Init failed");

	/*
	 * Connect to MariaDB now rather than on the first requests; what
	 * fails here is connected on first use.
	 */
	warm = db_warm((int)appconf->db_connections);
	log_debug("%d of %ld database connections made", warm,
	    appconf->db_connections);
	usage_start();
	spool_start("fcgi");
	if (pipe2(stop_pipe, O_CLOEXEC) == -1)
		fatal("pipe2");
	listen_fd = open_listener();
	n = appconf->threads;
	threads = front_threads(n, worker_main);
	log_info("listening on %s with %ld threads", listen_inherited ?
	    "the socket systemd passed" : appconf->listen, n);
	if ((rc = sd_notify(0, "READY=1")) < 0)
		log_warnx("sd_notify: %s", strerror(-rc));

	front_wait_stop(&set);
	log_info("stopping: finishing requests in progress");
	(void)sd_notify(0, "STOPPING=1");
	if (write(stop_pipe[1], "", 1) != 1)
		fatal("write stop pipe");
	/*
	 * A worker whose connection vanished between poll and accept waits
	 * in libfcgi's accept(2) for the next one.  Our own socket goes now
	 * anyway: shutting it down wakes that worker.  systemd's socket must
	 * stay whole, so there such a worker waits for the next connection,
	 * or for TimeoutStopSec.
	 */
	if (!listen_inherited) {
		if (shutdown(listen_fd, SHUT_RDWR) == -1)
			log_warn("shutdown listener");
		if (unlink(appconf->listen) == -1)
			log_warn("unlink %s", appconf->listen);
	}
	for (i = 0; i < n; i++)
		pthread_join(threads[i], NULL);
	spool_stop();
	usage_stop();
	db_end();
	close(listen_fd);
	close(stop_pipe[0]);
	close(stop_pipe[1]);
	free(threads);
	mysql_library_end();
	appconf_free(appconf);
	log_info("stopped");
	return (0);
}
