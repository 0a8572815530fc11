/*
 * ccgate-poold: start-up, configuration, signals and shutdown.
 *
 * Usage: ccgate-poold [-dnv] [-f config]
 *   -f	configuration file (default SYSCONFDIR/ccgate/poold.conf)
 *   -n	check the configuration and exit
 *   -v	more verbose logging (repeat for debug)
 */
#include "config.h"

#include <sys/stat.h>
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"
#include "poold.h"

#define POOLD_TICK_MS	100

struct poold	*poold;

static const char *const poold_keys[] = {
	"socket", "socket_mode", "socket_group", "state_dir", "cli_path",
	"cli_env_path", "default_model", "run_as_user", "min_instances",
	"min_warm", "max_warm", "warm_window_ms", "warm_profiles",
	"max_spawning", "spawn_nice", "max_pool_rss_mb",
	"max_instances", "tenant_max_jobs", "key_max_jobs",
	"tenant_max_processes", "queue_max", "tenant_max_queued",
	"queue_max_wait_ms", "job_timeout_ms", "first_event_timeout_ms",
	"stall_timeout_ms", "idle_timeout_ms", "max_messages_per_instance",
	"max_instance_age_ms", "health_check_interval_ms", "shutdown_grace_ms",
	"max_frame", "tool_park_ms", "rlimit_nofile", "rlimit_nproc",
	"cli_nice", "log_verbose",
	"sandbox", "sandbox_bwrap", "sandbox_setpriv", "sandbox_paths",
	"sandbox_tmp_mb", "egress_socket", "egress_auth",
	"cli_max_retries", "upstream_cooldown_ms", "upstream_probe_interval_ms",
	"temp_retention_s", "temp_sweep_interval_ms",
	NULL
};

/*
 * env. keys a CLI may not be given: what the daemon sets itself (the
 * sandbox depends on it), and, with an egress, the credential (it stays
 * in the egress) and anything that would send the CLI past the egress.
 */
static const char *const poold_env_own[] = {
	"PATH", "HOME", "CLAUDE_CONFIG_DIR", "TMPDIR", "SHELL",
	"CLAUDE_CODE_MAX_OUTPUT_TOKENS", "CLAUDE_AGENT_SDK_MCP_NO_PREFIX",
	"ENABLE_TOOL_SEARCH", NULL
};
static const char *const poold_env_credentials[] = {
	"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
	"ANTHROPIC_BASE_URL", "ANTHROPIC_UNIX_SOCKET",
	"CLAUDE_CODE_API_KEY_FILE_DESCRIPTOR",
	"CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR", "HTTP_PROXY", "HTTPS_PROXY",
	"http_proxy", "https_proxy", "ALL_PROXY", "CLAUDE_CODE_USE_BEDROCK",
	"CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY", NULL
};
static const char *const poold_prefixes[] = { "env.", NULL };

/* Free a configuration. */
void
poold_config_free(struct poold_config *cf)
{
	int	i;

	if (cf == NULL)
		return;
	free(cf->socket_path);
	free(cf->socket_group);
	free(cf->state_dir);
	free(cf->cli_path);
	free(cf->cli_real);
	free(cf->cli_env_path);
	free(cf->sandbox_bwrap);
	free(cf->sandbox_setpriv);
	free(cf->egress_socket);
	for (i = 0; i < cf->nsandbox_paths; i++)
		free(cf->sandbox_paths[i]);
	free(cf->default_model);
	free(cf->run_as_user);
	for (i = 0; i < cf->nenv; i++)
		free(cf->env[i]);
	free(cf);
}

/* Duplicate a configured string (or a default); NULL stays NULL. */
static int
poold_config_str(const struct conf *c, const char *key, const char *def,
    char **out)
{
	const char	*v = conf_str(c, key, def);

	*out = NULL;
	if (v == NULL || *v == '\0')
		return (0);
	return ((*out = strdup(v)) == NULL ? -1 : 0);
}

/* Whether name is in the NULL-terminated list. */
static int
poold_in(const char *const *list, const char *name)
{
	for (; *list != NULL; list++) {
		if (strcmp(*list, name) == 0)
			return (1);
	}
	return (0);
}

/* Refuse an env. key that the sandbox or the egress must own. */
static int
poold_env_refused(const struct poold_config *cf, const char *name,
    const char *path, int line, char **cause)
{
	if (poold_in(poold_env_own, name)) {
		util_cause(cause, "%s:%d: env.%s: ccgate-poold sets it itself",
		    path, line, name);
		return (-1);
	}
	if (cf->egress_socket != NULL && poold_in(poold_env_credentials,
	    name)) {
		util_cause(cause, "%s:%d: env.%s: with egress_socket, the "
		    "upstream credential and address belong to the egress "
		    "(nginx), never to a CLI", path, line, name);
		return (-1);
	}
	return (0);
}

/*
 * No CLI runs as root, nor as a user that can read this file (it names
 * the CLI's environment, and may hold more): run_as_user is required of
 * a daemon that runs as root, and must be somebody else.
 */
static int
poold_config_secure(const struct poold_config *cf, const char *path,
    char **cause)
{
	struct stat	sb;

	if (geteuid() != 0) {
		if (cf->run_as_user != NULL) {
			util_cause(cause, "%s: run_as_user needs ccgate-poold "
			    "to run as root", path);
			return (-1);
		}
		return (0);
	}
	if (cf->run_as_user == NULL) {
		util_cause(cause, "%s: ccgate-poold runs as root: set "
		    "run_as_user to the unprivileged user CLIs run as", path);
		return (-1);
	}
	if (stat(path, &sb) == 0 && (sb.st_uid == cf->run_uid ||
	    (sb.st_mode & S_IROTH) || ((sb.st_mode & S_IRGRP) &&
	    sb.st_gid == cf->run_gid))) {
		util_cause(cause, "%s: %s could read this file: make it "
		    "root's (or the daemon's), mode 0600", path,
		    cf->run_as_user);
		return (-1);
	}
	return (0);
}

/* sandbox_paths: absolute, comma-separated, read-only in every sandbox. */
static int
poold_config_paths(const struct conf *c, struct poold_config *cf,
    const char *path, char **cause)
{
	const char	*v = conf_str(c, "sandbox_paths", NULL);
	char		*copy, *next, *one;

	if (v == NULL)
		return (0);
	if ((copy = strdup(v)) == NULL) {
		*cause = strdup("out of memory");
		return (-1);
	}
	next = copy;
	while ((one = strsep(&next, ",")) != NULL) {
		one += strspn(one, " \t");
		one[strcspn(one, " \t")] = '\0';
		if (*one == '\0')
			continue;
		if (one[0] != '/' || strstr(one, "/..") != NULL ||
		    cf->nsandbox_paths == POOLD_SANDBOX_PATHS) {
			util_cause(cause, "%s: sandbox_paths: %s: at most %d "
			    "absolute paths", path, one, POOLD_SANDBOX_PATHS);
			free(copy);
			return (-1);
		}
		if ((cf->sandbox_paths[cf->nsandbox_paths] = strdup(one)) ==
		    NULL) {
			*cause = strdup("out of memory");
			free(copy);
			return (-1);
		}
		cf->nsandbox_paths++;
	}
	free(copy);
	return (0);
}

/* Read one integer setting. */
#define POOLD_INT(key, field, def, min, max) do {			\
	if (conf_long(c, key, def, min, max, &cf->field, cause) != 0)	\
		goto fail;						\
} while (0)

/* Load and validate the configuration file. */
struct poold_config *
poold_config_load(const char *path, char **cause)
{
	struct poold_config	*cf;
	struct conf		*c;
	struct passwd		*pw;
	const char		*mode, *v;
	char			*end;
	size_t			 i;
	long			 m, ncpu;

	if ((c = conf_load(path, cause)) == NULL)
		return (NULL);
	if (conf_check(c, poold_keys, poold_prefixes, cause) != 0) {
		conf_free(c);
		return (NULL);
	}
	if ((cf = calloc(1, sizeof *cf)) == NULL) {
		conf_free(c);
		*cause = strdup("out of memory");
		return (NULL);
	}
	if (poold_config_str(c, "socket", RUNSTATEDIR "/ccgate/poold.sock",
	    &cf->socket_path) != 0 ||
	    poold_config_str(c, "socket_group", NULL, &cf->socket_group) != 0 ||
	    poold_config_str(c, "state_dir", LOCALSTATEDIR "/lib/ccgate",
	    &cf->state_dir) != 0 ||
	    poold_config_str(c, "cli_path", "/usr/bin/claude",
	    &cf->cli_path) != 0 ||
	    poold_config_str(c, "cli_env_path", "/usr/local/bin:/usr/bin:/bin",
	    &cf->cli_env_path) != 0 ||
	    poold_config_str(c, "default_model", NULL, &cf->default_model) != 0 ||
	    poold_config_str(c, "run_as_user", NULL, &cf->run_as_user) != 0 ||
	    poold_config_str(c, "sandbox_bwrap", "/usr/bin/bwrap",
	    &cf->sandbox_bwrap) != 0 ||
	    poold_config_str(c, "sandbox_setpriv", "/usr/bin/setpriv",
	    &cf->sandbox_setpriv) != 0 ||
	    poold_config_str(c, "egress_socket", NULL,
	    &cf->egress_socket) != 0) {
		*cause = strdup("out of memory");
		goto fail;
	}
	if (cf->state_dir[0] != '/' || cf->cli_path[0] != '/' ||
	    cf->sandbox_bwrap[0] != '/' || cf->sandbox_setpriv[0] != '/' ||
	    (cf->egress_socket != NULL && cf->egress_socket[0] != '/')) {
		util_cause(cause, "%s: state_dir, cli_path, sandbox_bwrap, "
		    "sandbox_setpriv and egress_socket must be absolute", path);
		goto fail;
	}
	/* The sandbox mounts the CLI where it really is. */
	if ((cf->cli_real = realpath(cf->cli_path, NULL)) == NULL &&
	    (cf->cli_real = strdup(cf->cli_path)) == NULL) {
		*cause = strdup("out of memory");
		goto fail;
	}
	v = conf_str(c, "sandbox", "bwrap");
	if (strcmp(v, "bwrap") == 0)
		cf->sandbox = SANDBOX_BWRAP;
	else if (strcmp(v, "none") == 0)
		cf->sandbox = SANDBOX_NONE;
	else {
		util_cause(cause, "%s: sandbox: bwrap or none, not %s", path,
		    v);
		goto fail;
	}
	v = conf_str(c, "egress_auth", "api_key");
	if (strcmp(v, "oauth") == 0)
		cf->egress_oauth = 1;
	else if (strcmp(v, "api_key") != 0) {
		util_cause(cause, "%s: egress_auth: api_key or oauth, not %s",
		    path, v);
		goto fail;
	}
	if (poold_config_paths(c, cf, path, cause) != 0)
		goto fail;
	mode = conf_str(c, "socket_mode", "0660");
	m = strtol(mode, &end, 8);
	if (*mode == '\0' || *end != '\0' || m < 0 || m > 0777) {
		util_cause(cause, "%s: socket_mode: not an octal mode: %s",
		    path, mode);
		goto fail;
	}
	cf->socket_mode = (mode_t)m;
	POOLD_INT("min_instances", min_instances, 2, 0, 1024);
	POOLD_INT("min_warm", min_warm, 2, 0, 1024);
	POOLD_INT("max_warm", max_warm, 8, 0, 1024);
	POOLD_INT("warm_window_ms", warm_window_ms, 30000, WARM_BUCKET_MS,
	    WARM_BUCKETS * WARM_BUCKET_MS);
	POOLD_INT("warm_profiles", warm_profiles, 4, 0, WARM_PROFILES_MAX);
	/* Spawns at once: one per core (at least 2), so a burst uses them. */
	if ((ncpu = sysconf(_SC_NPROCESSORS_ONLN)) < 2)
		ncpu = 2;
	POOLD_INT("max_spawning", max_spawning, ncpu > 1024 ? 1024 : ncpu, 0,
	    1024);
	POOLD_INT("spawn_nice", spawn_nice, 10, 0, 19);
	POOLD_INT("max_pool_rss_mb", max_pool_rss_mb, 0, 0, 16777216);
	POOLD_INT("max_instances", max_instances, 10, 1, 1024);
	POOLD_INT("tenant_max_jobs", tenant_max_jobs, 4, 1, 1024);
	POOLD_INT("key_max_jobs", key_max_jobs, 0, 0, 1024);
	POOLD_INT("tenant_max_processes", tenant_max_processes, 8, 1, 1024);
	POOLD_INT("queue_max", queue_max, 256, 0, 100000);
	POOLD_INT("tenant_max_queued", tenant_max_queued, 64, 0, 100000);
	POOLD_INT("queue_max_wait_ms", queue_max_wait_ms, 30000, 0, 3600000);
	POOLD_INT("job_timeout_ms", job_timeout_ms, 600000, 100, 86400000);
	POOLD_INT("first_event_timeout_ms", first_event_timeout_ms, 120000, 100,
	    86400000);
	POOLD_INT("stall_timeout_ms", stall_timeout_ms, 120000, 100, 86400000);
	POOLD_INT("idle_timeout_ms", idle_timeout_ms, 300000, 0, 86400000);
	POOLD_INT("max_messages_per_instance", max_messages_per_instance, 100, 0,
	    1000000);
	POOLD_INT("max_instance_age_ms", max_instance_age_ms, 3600000, 0,
	    604800000);
	POOLD_INT("health_check_interval_ms", health_check_interval_ms, 30000,
	    100, 3600000);
	POOLD_INT("shutdown_grace_ms", shutdown_grace_ms, 10000, 0, 3600000);
	POOLD_INT("max_frame", max_frame, PROTO_JOB_MAX, PROTO_MIN_MAX,
	    PROTO_LARGEST);
	POOLD_INT("tool_park_ms", tool_park_ms, 600000, 1000, 86400000);
	POOLD_INT("cli_max_retries", cli_max_retries, 2, -1, 15);
	POOLD_INT("upstream_cooldown_ms", upstream_cooldown_ms, 10000, 0,
	    3600000);
	POOLD_INT("upstream_probe_interval_ms", upstream_probe_interval_ms,
	    60000, 1000, 86400000);
	POOLD_INT("rlimit_nofile", rlimit_nofile, 4096, 64, 1048576);
	POOLD_INT("rlimit_nproc", rlimit_nproc, 0, 0, 1048576);
	POOLD_INT("cli_nice", cli_nice, 5, 0, 19);
	POOLD_INT("temp_retention_s", temp_retention_s, 7 * 86400, 0,
	    3650L * 86400);
	POOLD_INT("temp_sweep_interval_ms", temp_sweep_interval_ms, 600000,
	    1000, 86400000);
	POOLD_INT("log_verbose", verbose, 0, 0, 2);
	POOLD_INT("sandbox_tmp_mb", sandbox_tmp_mb, 256, 1, 65536);
	if (cf->min_instances > cf->max_instances) {
		util_cause(cause, "%s: min_instances exceeds max_instances",
		    path);
		goto fail;
	}
	if (cf->run_as_user != NULL) {
		if ((pw = getpwnam(cf->run_as_user)) == NULL) {
			util_cause(cause, "%s: run_as_user: unknown user %s",
			    path, cf->run_as_user);
			goto fail;
		}
		cf->run_uid = pw->pw_uid;
		cf->run_gid = pw->pw_gid;
		if (cf->run_uid == 0) {
			util_cause(cause, "%s: run_as_user: %s is root; CLIs "
			    "run as an unprivileged user", path,
			    cf->run_as_user);
			goto fail;
		}
	}
	for (i = 0; i < c->n; i++) {
		struct conf_entry	*e = &c->entries[i];

		if (strncmp(e->key, "env.", 4) != 0)
			continue;
		if (poold_env_refused(cf, e->key + 4, path, e->line,
		    cause) != 0)
			goto fail;
		if (cf->nenv == POOLD_ENV_MAX) {
			util_cause(cause, "%s: too many env. keys", path);
			goto fail;
		}
		if (asprintf(&cf->env[cf->nenv], "%s=%s", e->key + 4,
		    e->value) == -1) {
			*cause = strdup("out of memory");
			goto fail;
		}
		cf->nenv++;
	}
	if (poold_config_secure(cf, path, cause) != 0 ||
	    sandbox_check(cf, cause) != 0)
		goto fail;
	conf_free(c);
	return (cf);
fail:
	conf_free(c);
	poold_config_free(cf);
	return (NULL);
}

/* Reload the configuration on SIGHUP; the socket and state stay. */
static void
poold_reload(void)
{
	struct poold_config	*ncf, *ocf = poold->cf;
	char			*cause = NULL, *tmp;

	if ((ncf = poold_config_load(poold->config_path, &cause)) == NULL) {
		log_warnx("reload failed, keeping the old configuration: %s",
		    cause);
		free(cause);
		return;
	}
	if (strcmp(ncf->socket_path, ocf->socket_path) != 0 ||
	    strcmp(ncf->state_dir, ocf->state_dir) != 0)
		log_warnx("socket and state_dir changes need a restart");
	tmp = ncf->socket_path;
	ncf->socket_path = ocf->socket_path;
	ocf->socket_path = tmp;
	tmp = ncf->state_dir;
	ncf->state_dir = ocf->state_dir;
	ocf->state_dir = tmp;
	if (ncf->sandbox != ocf->sandbox) {
		log_warnx("sandbox changes need a restart");
		ncf->sandbox = ocf->sandbox;
	}
	poold->cf = ncf;
	if (sandbox_init(ncf->state_dir, &cause) != 0) {
		log_warnx("reload: %s", cause);
		free(cause);
	}
	poold_config_free(ocf);
	log_setverbose((int)ncf->verbose > log_getverbose() ?
	    (int)ncf->verbose : log_getverbose());
	log_info("configuration reloaded");
	upstream_probe_now("the configuration was reloaded");
	pool_dispatch();
}

/* Signals, delivered by the loop. */
static void
poold_signal_cb(int sig, void *arg)
{
	switch (sig) {
	case SIGCHLD:
		proc_reap();
		break;
	case SIGHUP:
		poold_reload();
		break;
	case SIGTERM:
	case SIGINT:
		if (poold->listen_fd != -1) {
			loop_del(poold->loop, &poold->listen_io);
			close(poold->listen_fd);
			poold->listen_fd = -1;
			if (unlink(poold->cf->socket_path) == -1)
				log_warn("unlink %s", poold->cf->socket_path);
		}
		pool_shutdown();
		if (poold->nprocs == 0)
			loop_stop(poold->loop);
		break;
	}
}

int
main(int argc, char **argv)
{
	static const int	 sigs[] = { SIGCHLD, SIGHUP, SIGTERM, SIGINT };
	struct util_args	 args;
	char			*cause = NULL;

	util_args("ccgate-poold", argc, argv, SYSCONFDIR "/ccgate/poold.conf",
	    &args);
	log_init("ccgate-poold", args.verbose);
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		fatal("signal");

	if ((poold = calloc(1, sizeof *poold)) == NULL)
		fatal("calloc");
	TAILQ_INIT(&poold->procs);
	TAILQ_INIT(&poold->queue);
	poold->listen_fd = -1;
	poold->clock = util_now_ms;
	if ((poold->config_path = strdup(args.config)) == NULL)
		fatal("strdup");
	if ((poold->cf = poold_config_load(args.config, &cause)) == NULL)
		fatalx("%s", cause);
	if (args.check) {
		printf("configuration OK\n");
		poold_config_free(poold->cf);
		free(poold->config_path);
		free(poold);
		return (0);
	}
	if (poold->cf->verbose > args.verbose)
		log_setverbose((int)poold->cf->verbose);
	if (access(poold->cf->cli_path, X_OK) != 0)
		log_warn("cli_path %s is not executable", poold->cf->cli_path);

	poold->run_as_root = geteuid() == 0;
	if (workspace_init(poold->cf->state_dir, &cause) != 0 ||
	    egress_init(poold->cf->state_dir, &cause) != 0 ||
	    sandbox_init(poold->cf->state_dir, &cause) != 0)
		fatalx("state directory: %s", cause);
	if (poold->cf->sandbox == SANDBOX_NONE)
		log_warnx("sandbox = none: CLIs run on the host as %s, and "
		    "tools are refused", poold->cf->run_as_user != NULL ?
		    poold->cf->run_as_user : "this daemon's user");
	if (poold->cf->egress_socket == NULL)
		log_warnx("no egress_socket: CLIs reach the network directly, "
		    "with whatever credential the env. keys give them");
	poold->neutral_dir = workspace_path(poold->cf->state_dir, "neutral",
	    NULL);
	if (poold->neutral_dir == NULL)
		fatal("asprintf");
	poold->listen_fd = server_listen(poold->cf->socket_path,
	    poold->cf->socket_mode, poold->cf->socket_group, &cause);
	if (poold->listen_fd == -1)
		fatalx("%s", cause);

	if ((poold->loop = loop_create(POOLD_TICK_MS, pool_tick, NULL)) == NULL)
		fatal("event loop");
	if (loop_signals(poold->loop, sigs, (int)(sizeof sigs / sizeof *sigs),
	    poold_signal_cb, NULL) != 0)
		fatal("signals");
	if (loop_add(poold->loop, &poold->listen_io, poold->listen_fd, EPOLLIN,
	    server_accept_cb, NULL) != 0)
		fatal("watch listening socket");
	poold->stats.started_at = poold_now();
	poold->last_health = poold->stats.started_at;
	log_info("listening on %s (min %ld, max %ld CLI processes)",
	    poold->cf->socket_path, poold->cf->min_instances,
	    poold->cf->max_instances);
	pool_dispatch();

	if (loop_run(poold->loop) != 0)
		fatal("event loop");

	server_close_all();
	upstream_free();
	warm_free();
	proc_reap();
	log_info("stopped");
	loop_free(poold->loop);
	poold_config_free(poold->cf);
	free(poold->neutral_dir);
	free(poold->config_path);
	free(poold);
	return (0);
}
