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
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fcgiapp.h>
#include <mysql.h>
#include <sodium.h>

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
	struct group	*gr;
	mode_t		 old;
	int		 fd;

	if (unlink(appconf->listen) == -1 && errno != ENOENT)
		fatal("unlink %s", appconf->listen);
	old = umask(0177);
	fd = FCGX_OpenSocket(appconf->listen, 1024);
	umask(old);
	if (fd < 0)
		fatalx("cannot listen on %s", appconf->listen);
	if (appconf->listen_group != NULL) {
		if ((gr = getgrnam(appconf->listen_group)) == NULL)
			fatalx("unknown group %s", appconf->listen_group);
		if (chown(appconf->listen, (uid_t)-1, gr->gr_gid) == -1)
			fatal("chown %s", appconf->listen);
	}
	if (chmod(appconf->listen, (mode_t)appconf->listen_mode) == -1)
		fatal("chmod %s", appconf->listen);
	return (fd);
}

/* Print usage and exit. */
static void __attribute__((noreturn))
usage(void)
{
	fprintf(stderr, "usage: ccgate-fcgi [-nv] [-f config]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char	*path = SYSCONFDIR "/ccgate/ccgate.conf";
	pthread_attr_t	 attr;
	pthread_t	*threads;
	sigset_t	 set;
	char		*cause = NULL;
	int		 ch, sig, check = 0, verbose = 0;
	long		 i, n;

	while ((ch = getopt(argc, argv, "f:nv")) != -1) {
		switch (ch) {
		case 'f':
			path = optarg;
			break;
		case 'n':
			check = 1;
			break;
		case 'v':
			verbose++;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	log_init("ccgate-fcgi", verbose);
	if (sodium_init() < 0)
		fatalx("libsodium cannot be initialised");
	if ((appconf = appconf_load(path, &cause)) == NULL)
		fatalx("%s", cause);
	if (!appconf->have_secret)
		fatalx("no key secret at %s", appconf->key_secret_file);
	if (check) {
		printf("configuration OK\n");
		appconf_free(appconf);
		return (0);
	}
	if (appconf->verbose > verbose)
		log_setverbose((int)appconf->verbose);
	if (mysql_library_init(0, NULL, NULL) != 0)
		fatalx("mysql_library_init failed");
	if (FCGX_Init() != 0)
		fatalx("FCGX_Init failed");

	/* Every thread inherits this mask; only sigwait below sees these. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		fatalx("pthread_sigmask");
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		fatal("signal");

	usage_start();
	listen_fd = open_listener();
	n = appconf->threads;
	if ((threads = calloc((size_t)n, sizeof *threads)) == NULL)
		fatal("calloc");
	if (pthread_attr_init(&attr) != 0 ||
	    pthread_attr_setstacksize(&attr, 512 * 1024) != 0)
		fatalx("pthread_attr");
	for (i = 0; i < n; i++) {
		if (pthread_create(&threads[i], &attr, worker_main, NULL) != 0)
			fatalx("pthread_create");
	}
	pthread_attr_destroy(&attr);
	log_info("listening on %s with %ld threads", appconf->listen, n);

	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			log_info("SIGHUP: nothing to reload; restart to apply "
			    "configuration changes");
			continue;
		}
		break;
	}
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
