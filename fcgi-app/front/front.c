/*
 * What the two front ends, ccgate-fcgi (fcgi.c) and ccgate-ws (ws.c),
 * share around their own transport: the command line and configuration,
 * the signals only a waiting thread sees, the listening socket's mode and
 * group, the worker threads, and the wait for a stop signal.
 */
#include "config.h"

#include <sys/stat.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <mysql.h>
#include <sodium.h>

#include "core.h"
#include "front.h"
#include "log.h"

/*
 * Start prog: read "[-nv] [-f config]", load the configuration into
 * appconf (with -n: say it is good and exit), start the libraries, and
 * block the stop signals (set) in every thread to come.  Returns the
 * number of -v.
 */
int
front_start(const char *prog, int argc, char **argv, sigset_t *set)
{
	struct util_args	 args;
	char			*cause = NULL;

	util_args(prog, argc, argv, SYSCONFDIR "/ccgate/ccgate.conf", &args);
	log_init(prog, args.verbose);
	if (sodium_init() < 0)
		fatalx("libsodium cannot be initialised");
	if ((appconf = appconf_load(args.config, &cause)) == NULL)
		fatalx("%s", cause);
	if (!appconf->have_secret)
		fatalx("no key secret at %s", appconf->key_secret_file);
	if (args.check) {
		printf("configuration OK\n");
		appconf_free(appconf);
		exit(0);
	}
	if (appconf->verbose > args.verbose)
		log_setverbose((int)appconf->verbose);
	if (mysql_library_init(0, NULL, NULL) != 0)
		fatalx("mysql_library_init failed");

	/* Every thread inherits this mask; only front_wait_stop sees these. */
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	if (pthread_sigmask(SIG_BLOCK, set, NULL) != 0)
		fatalx("pthread_sigmask");
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		fatal("signal");
	return (args.verbose);
}

/* Give a listening socket the configured mode and group (nginx's). */
void
front_socket_perms(const char *path)
{
	struct group	*gr;

	if (appconf->listen_group != NULL) {
		if ((gr = getgrnam(appconf->listen_group)) == NULL)
			fatalx("unknown group %s", appconf->listen_group);
		if (chown(path, (uid_t)-1, gr->gr_gid) == -1)
			fatal("chown %s", path);
	}
	if (chmod(path, (mode_t)appconf->listen_mode) == -1)
		fatal("chmod %s", path);
}

/* Start n threads running fn, with stacks of 512 KB. */
pthread_t *
front_threads(long n, void *(*fn)(void *))
{
	pthread_attr_t	 attr;
	pthread_t	*threads;
	long		 i;

	if ((threads = calloc((size_t)n, sizeof *threads)) == NULL)
		fatal("calloc");
	if (pthread_attr_init(&attr) != 0 ||
	    pthread_attr_setstacksize(&attr, 512 * 1024) != 0)
		fatalx("pthread_attr");
	for (i = 0; i < n; i++) {
		if (pthread_create(&threads[i], &attr, fn, NULL) != 0)
			fatalx("pthread_create");
	}
	pthread_attr_destroy(&attr);
	return (threads);
}

/* Wait for SIGTERM or SIGINT (SIGHUP only says it reloads nothing). */
void
front_wait_stop(sigset_t *set)
{
	int	sig;

	for (;;) {
		if (sigwait(set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			log_info("SIGHUP: nothing to reload; restart to apply "
			    "configuration changes");
			continue;
		}
		return;
	}
}
