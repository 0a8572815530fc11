/*
 * Configuration of ccgate-fcgi and ccgate-admin: ccgate.conf, in the
 * format of common/conf.c.  Secrets (the database password, the key
 * hashing secret, the admin token secret) are read from files named here,
 * never from the file itself, so the configuration can be world-readable.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "core.h"
#include "conf.h"

struct app_config	*appconf;

static const char *const app_keys[] = {
	"listen", "listen_mode", "listen_group", "threads", "db_host",
	"db_port", "db_socket", "db_user", "db_password_file", "db_name",
	"db_timeout_s", "db_connections", "key_secret_file",
	"admin_secret_file", "poold_socket", "max_body",
	"max_message", "max_json_depth", "job_timeout_ms", "default_model",
	"models", "node", "sql_dir", "batch_max", "key_cache_ms",
	"cors_origins", "log_verbose", "admin_token_ttl_s", "rotate_grace_s",
	"sse_heartbeat_ms", "db_retry_ms", "ws_listen", "ws_threads",
	"ws_max_message", "ws_max_connections", "quota_reserve_tokens",
	"signature_skew_s", "idempotency_window_s", "idempotency_max_answer",
	"idempotency_key_bytes", "idempotency_lease_s", "workspace_max_bytes",
	"workspace_max_files", "files_hash_max_bytes", "db_hosts",
	"db_failback_s", "db_sync_wait", "spool_dir", NULL
};

/*
 * Parse a host list ("host", "host:port", "[v6]:port", separated by
 * commas or blanks; defport where none is given) into h (at most
 * DB_MAX_HOSTS; names allocated).  Returns how many, or -1 (*cause says
 * why; nothing is left allocated).
 */
int
appconf_hosts_parse(const char *text, long defport, struct db_host *h,
    char **cause)
{
	char	*list, *p, *tok, *colon, *end;
	long	 port;
	int	 n = 0;

	if ((list = strdup(text)) == NULL)
		goto nomem;
	for (p = list; (tok = strsep(&p, ", \t")) != NULL;) {
		if (*tok == '\0')
			continue;
		if (n == DB_MAX_HOSTS) {
			util_cause(cause, "more than %d hosts", DB_MAX_HOSTS);
			goto fail;
		}
		port = defport;
		colon = NULL;
		if (*tok == '[') {
			if ((end = strchr(tok, ']')) == NULL ||
			    (end[1] != '\0' && end[1] != ':')) {
				util_cause(cause, "%s: not [address]:port",
				    tok);
				goto fail;
			}
			*end = '\0';
			colon = end[1] == ':' ? end + 1 : NULL;
			tok++;
		} else if ((colon = strrchr(tok, ':')) != NULL &&
		    strchr(tok, ':') != colon)
			colon = NULL;	/* a bare IPv6 address */
		if (colon != NULL) {
			*colon = '\0';
			port = strtol(colon + 1, &end, 10);
			if (colon[1] == '\0' || *end != '\0' || port < 1 ||
			    port > 65535) {
				util_cause(cause, "%s: not a port", colon + 1);
				goto fail;
			}
		}
		if (*tok == '\0') {
			util_cause(cause, "a host without a name");
			goto fail;
		}
		if ((h[n].name = strdup(tok)) == NULL)
			goto nomem;
		h[n++].port = (unsigned int)port;
	}
	free(list);
	if (n == 0)
		util_cause(cause, "no host");
	return (n > 0 ? n : -1);
nomem:
	util_cause(cause, "out of memory");
fail:
	while (n-- > 0)
		free(h[n].name);
	free(list);
	return (-1);
}

/* Check db_hosts (or db_host, read the same way). */
static int
app_hosts(const struct app_config *cf, const char *path, char **cause)
{
	struct db_host	 h[DB_MAX_HOSTS];
	const char	*list = cf->db_hosts != NULL ? cf->db_hosts :
			    cf->db_host;
	char		*why = NULL;
	int		 n;

	if (list == NULL)
		return (0);
	if ((n = appconf_hosts_parse(list, cf->db_port, h, &why)) < 0) {
		util_cause(cause, "%s: %s: %s", path, cf->db_hosts != NULL ?
		    "db_hosts" : "db_host", why);
		free(why);
		return (-1);
	}
	while (n-- > 0)
		free(h[n].name);
	return (0);
}

/* Free a configuration. */
void
appconf_free(struct app_config *cf)
{
	int	i;

	if (cf == NULL)
		return;
	free(cf->listen);
	free(cf->listen_group);
	free(cf->ws_listen);
	free(cf->db_host);
	free(cf->db_hosts);
	free(cf->spool_dir);
	free(cf->db_socket);
	free(cf->db_user);
	if (cf->db_password != NULL) {
		explicit_bzero(cf->db_password, strlen(cf->db_password));
		free(cf->db_password);
	}
	free(cf->db_name);
	free(cf->key_secret_file);
	free(cf->admin_secret_file);
	free(cf->poold_socket);
	free(cf->default_model);
	for (i = 0; i < cf->nmodels; i++)
		free(cf->models[i]);
	free(cf->node);
	free(cf->sql_dir);
	free(cf->cors_origins);
	explicit_bzero(cf->key_secret, sizeof cf->key_secret);
	explicit_bzero(cf->admin_secret, sizeof cf->admin_secret);
	free(cf);
}

/* Duplicate a string setting; absent or empty gives def (may be NULL). */
static int
app_str(const struct conf *c, const char *key, const char *def, char **out)
{
	const char	*v = conf_str(c, key, def);

	*out = NULL;
	if (v == NULL || *v == '\0')
		return (0);
	return ((*out = strdup(v)) == NULL ? -1 : 0);
}

/* Read the first line of a small file (a password). */
static char *
app_read_line(const char *path, char **cause)
{
	char	buf[512];
	ssize_t	n;
	int	fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		util_cause(cause, "%s: %s", path, strerror(errno));
		return (NULL);
	}
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n < 0) {
		util_cause(cause, "%s: %s", path, strerror(errno));
		return (NULL);
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	return (strdup(buf));
}

/* Split a comma-separated model list. */
static int
app_models(struct app_config *cf, const char *list, char **cause)
{
	char	*copy, *tok, *save = NULL;

	if ((copy = strdup(list)) == NULL)
		return (-1);
	for (tok = strtok_r(copy, ", ", &save); tok != NULL;
	    tok = strtok_r(NULL, ", ", &save)) {
		if (cf->nmodels == APP_MAX_MODELS) {
			*cause = strdup("models: too many");
			free(copy);
			return (-1);
		}
		if ((cf->models[cf->nmodels++] = strdup(tok)) == NULL) {
			free(copy);
			return (-1);
		}
	}
	free(copy);
	return (0);
}

#define APP_INT(key, field, def, min, max) do {				\
	if (conf_long(c, key, def, min, max, &cf->field, cause) != 0)	\
		goto fail;						\
} while (0)

/*
 * Load the 32-byte hashing secret: 64 hexadecimal digits in a file that
 * only the service may read.
 */
static int
appconf_secret(const char *path, uint8_t secret[32], char **cause)
{
	char	buf[130];
	size_t	binlen;
	ssize_t	n;
	int	fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		util_cause(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n < 64) {
		util_cause(cause, "%s: expected 64 hexadecimal digits",
		    path);
		return (-1);
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
	if (strlen(buf) != 64 || sodium_hex2bin(secret, 32, buf, 64, NULL,
	    &binlen, NULL) != 0 || binlen != 32) {
		sodium_memzero(buf, sizeof buf);
		util_cause(cause, "%s: expected 64 hexadecimal digits",
		    path);
		return (-1);
	}
	sodium_memzero(buf, sizeof buf);
	return (0);
}

/*
 * Load ccgate.conf.  Each secret is loaded if its file exists; programs
 * that need one check have_secret or have_admin_secret.  The admin secret
 * must not be the key hashing secret: whoever reads key.secret could then
 * sign admin tokens.
 */
struct app_config *
appconf_load(const char *path, char **cause)
{
	struct app_config	*cf;
	struct conf		*c;
	const char		*v;
	char			*end;

	if ((c = conf_load(path, cause)) == NULL)
		return (NULL);
	if (conf_check(c, app_keys, NULL, cause) != 0) {
		conf_free(c);
		return (NULL);
	}
	if ((cf = calloc(1, sizeof *cf)) == NULL)
		goto nomem;
	if (app_str(c, "listen", RUNSTATEDIR "/ccgate/fcgi.sock",
	    &cf->listen) != 0 ||
	    app_str(c, "listen_group", NULL, &cf->listen_group) != 0 ||
	    app_str(c, "db_host", NULL, &cf->db_host) != 0 ||
	    app_str(c, "db_hosts", NULL, &cf->db_hosts) != 0 ||
	    app_str(c, "spool_dir", LOCALSTATEDIR "/lib/ccgate/fcgi-spool",
	    &cf->spool_dir) != 0 ||
	    app_str(c, "db_socket", NULL, &cf->db_socket) != 0 ||
	    app_str(c, "db_user", "ccgate", &cf->db_user) != 0 ||
	    app_str(c, "db_name", "ccgate", &cf->db_name) != 0 ||
	    app_str(c, "key_secret_file", SYSCONFDIR "/ccgate/key.secret",
	    &cf->key_secret_file) != 0 ||
	    app_str(c, "admin_secret_file", SYSCONFDIR "/ccgate/admin.secret",
	    &cf->admin_secret_file) != 0 ||
	    app_str(c, "poold_socket", RUNSTATEDIR "/ccgate/poold.sock",
	    &cf->poold_socket) != 0 ||
	    app_str(c, "default_model", "claude-sonnet-4-5",
	    &cf->default_model) != 0 ||
	    app_str(c, "node", "node1", &cf->node) != 0 ||
	    app_str(c, "sql_dir", DATADIR "/sql", &cf->sql_dir) != 0 ||
	    app_str(c, "cors_origins", NULL, &cf->cors_origins) != 0 ||
	    app_str(c, "ws_listen", RUNSTATEDIR "/ccgate/ws.sock",
	    &cf->ws_listen) != 0)
		goto nomem;
	v = conf_str(c, "listen_mode", "0660");
	cf->listen_mode = strtol(v, &end, 8);
	if (*v == '\0' || *end != '\0' || cf->listen_mode < 0 ||
	    cf->listen_mode > 0777) {
		util_cause(cause, "%s: listen_mode: not an octal mode",
		    path);
		goto fail;
	}
	APP_INT("threads", threads, 64, 1, 4096);
	APP_INT("db_port", db_port, 3306, 1, 65535);
	APP_INT("db_timeout_s", db_timeout_s, 5, 1, 600);
	APP_INT("db_connections", db_connections, 16, 2, 4096);
	APP_INT("max_body", max_body, 1024 * 1024, 1024, 64 * 1024 * 1024);
	APP_INT("max_message", max_message, 256 * 1024, 1, 16 * 1024 * 1024);
	APP_INT("max_json_depth", max_json_depth, 32, 2, 1000);
	APP_INT("job_timeout_ms", job_timeout_ms, 600000, 100, 86400000);
	APP_INT("batch_max", batch_max, 16, 1, 256);
	APP_INT("quota_reserve_tokens", quota_reserve_tokens, 4096, 1,
	    1000000);
	APP_INT("key_cache_ms", key_cache_ms, 5000, 0, 600000);
	APP_INT("log_verbose", verbose, 0, 0, 2);
	APP_INT("admin_token_ttl_s", admin_token_ttl_s, 900, 1, 86400);
	APP_INT("rotate_grace_s", rotate_grace_s, 86400, 0, 30 * 86400);
	APP_INT("sse_heartbeat_ms", sse_heartbeat_ms, 15000, 100, 300000);
	APP_INT("db_retry_ms", db_retry_ms, 30000, 0, 600000);
	APP_INT("db_failback_s", db_failback_s, 30, 1, 86400);
	APP_INT("db_sync_wait", db_sync_wait, -1, -1, 15);
	APP_INT("ws_threads", ws_threads, 64, 1, 4096);
	APP_INT("ws_max_message", ws_max_message, 1024 * 1024, 1024,
	    64 * 1024 * 1024);
	APP_INT("ws_max_connections", ws_max_connections, 1024, 1, 65536);
	APP_INT("signature_skew_s", signature_skew_s, 300, 1, 3600);
	APP_INT("idempotency_window_s", idem_window_s, 86400, 60, 30 * 86400);
	APP_INT("idempotency_max_answer", idem_max_answer, 1024 * 1024, 1024,
	    16 * 1024 * 1024 - 1);
	APP_INT("idempotency_key_bytes", idem_key_bytes, 64L * 1024 * 1024,
	    1024, 1L << 40);
	APP_INT("idempotency_lease_s", idem_lease_s, 0, 0, 86400 + 3600);
	APP_INT("workspace_max_bytes", workspace_max_bytes,
	    1024L * 1024 * 1024, 0, 1024L * 1024 * 1024 * 1024 * 1024);
	APP_INT("workspace_max_files", workspace_max_files, 10000, 0,
	    1000000);
	APP_INT("files_hash_max_bytes", files_hash_max_bytes,
	    256L * 1024 * 1024, 0, 1024L * 1024 * 1024 * 1024);
	if (app_models(cf, conf_str(c, "models", cf->default_model),
	    cause) != 0)
		goto fail;
	if (app_hosts(cf, path, cause) != 0)
		goto fail;
	if ((v = conf_get(c, "db_password_file")) != NULL && *v != '\0') {
		if ((cf->db_password = app_read_line(v, cause)) == NULL)
			goto fail;
	}
	if (access(cf->key_secret_file, F_OK) == 0) {
		if (appconf_secret(cf->key_secret_file, cf->key_secret,
		    cause) != 0)
			goto fail;
		cf->have_secret = 1;
	}
	if (access(cf->admin_secret_file, F_OK) == 0) {
		if (appconf_secret(cf->admin_secret_file, cf->admin_secret,
		    cause) != 0)
			goto fail;
		cf->have_admin_secret = 1;
	}
	if (cf->have_secret && cf->have_admin_secret &&
	    sodium_memcmp(cf->key_secret, cf->admin_secret, 32) == 0) {
		util_cause(cause, "%s: holds the key hashing secret of %s: "
		    "make a secret of its own (ccgate-admin secret FILE)",
		    cf->admin_secret_file, cf->key_secret_file);
		goto fail;
	}
	conf_free(c);
	return (cf);
nomem:
	*cause = strdup("out of memory");
fail:
	conf_free(c);
	appconf_free(cf);
	return (NULL);
}
