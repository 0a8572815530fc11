/*
 * ccgate-fcgi: the FastCGI application.  A fixed set of worker threads
 * accept requests on one unix socket (mode 0660, for nginx's group only:
 * Debian 12's libfcgi is not fully patched for CVE-2025-23016, so nobody
 * else may write to it).  One thread waits for signals; on SIGTERM it
 * shuts the listening socket down so that workers finish what they hold
 * and return.
 *
 * Usage: ccgate-fcgi [-nv] [-f config]
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fcgiapp.h>
#include <mysql.h>

#include "app.h"
#include "log.h"
#include "request.h"

static int		listen_fd = -1;
static volatile int	stopping;
static pthread_mutex_t	accept_lock = PTHREAD_MUTEX_INITIALIZER;

/* A worker: accept and handle requests until shutdown. */
static void *
worker_main(void *arg)
{
	FCGX_Request	fx;
	int		rc;

	if (FCGX_InitRequest(&fx, listen_fd, FCGI_FAIL_ACCEPT_ON_INTR) != 0) {
		log_warnx("FCGX_InitRequest failed");
		return (NULL);
	}
	while (!stopping) {
		pthread_mutex_lock(&accept_lock);
		rc = stopping ? -1 : FCGX_Accept_r(&fx);
		pthread_mutex_unlock(&accept_lock);
		if (rc < 0)
			break;
		req_handle(&fx);
	}
	FCGX_Free(&fx, 1);
	db_thread_free();
	return (NULL);
}

/* Create the listening socket with the configured mode and group. */
static int
open_listener(void)
{
	mode_t		 old;
	int		 fd;

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

	(void)front_start("ccgate-fcgi", argc, argv, &set);
	if (FCGX_Init() != 0)
		fatalx("FCGX_Init failed");

	usage_start();
	listen_fd = open_listener();
	n = appconf->threads;
	threads = front_threads(n, worker_main);
	log_info("listening on %s with %ld threads", appconf->listen, n);

	front_wait_stop(&set);
	log_info("stopping: finishing requests in progress");
	stopping = 1;
	if (shutdown(listen_fd, SHUT_RDWR) == -1)
		log_warn("shutdown listener");
	if (unlink(appconf->listen) == -1)
		log_warn("unlink %s", appconf->listen);
	for (i = 0; i < n; i++)
		pthread_join(threads[i], NULL);
	usage_stop();
	close(listen_fd);
	free(threads);
	mysql_library_end();
	appconf_free(appconf);
	log_info("stopped");
	return (0);
}
