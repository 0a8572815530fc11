/*
 * ccgate-admin: the operator's command line.
 *
 *   ccgate-admin [-f config] migrate
 *   ccgate-admin [-f config] key create --name NAME [--user USER] [options]
 *   ccgate-admin [-f config] key list [--status S] [--user USER]
 *   ccgate-admin [-f config] key show ID
 *   ccgate-admin [-f config] key update ID [options]
 *   ccgate-admin [-f config] key rotate ID [--grace SECONDS]
 *   ccgate-admin [-f config] key revoke ID
 *   ccgate-admin [-f config] user create|passwd NAME   (password on stdin)
 *   ccgate-admin [-f config] user list
 *   ccgate-admin [-f config] user disable|enable NAME
 *   ccgate-admin [-f config] usage [--key ID] [--days N]
 *   ccgate-admin [-f config] purge [--usage-days N] [--deleted-days N]
 *   ccgate-admin secret FILE
 *   ccgate-admin --help
 *
 * secret writes 32 random bytes as 64 hex digits: the key hashing secret
 * (key_secret_file) or the admin token secret (admin_secret_file), two
 * files made apart.  Every command but secret takes --json for output
 * scripts can read.
 * Key and user changes go through the same code as the admin API
 * (keys.c, adminuser.c) and are audited as "cli:<unix user>".
 *
 * migrate applies the numbered files NNN_name.sql of sql_dir that are not
 * yet recorded in schema_migrations, in order, under a named lock so two
 * runs cannot race; running it twice changes nothing.
 */
#include "config.h"

#include <sys/stat.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mysql.h>
#include <sodium.h>

#include "core.h"
#include "log.h"

#define ADMIN_MAX_SQL	(4 * 1024 * 1024)

/* Print the usage to fp. */
static void
admin_help(FILE *fp)
{
	fprintf(fp,
	    "usage: ccgate-admin [-f config] migrate\n"
	    "       ccgate-admin [-f config] key create --name NAME "
	    "[--user USER] [key options] [--json]\n"
	    "       ccgate-admin [-f config] key list [--status S] "
	    "[--user USER] [--json]\n"
	    "       ccgate-admin [-f config] key show|revoke ID [--json]\n"
	    "       ccgate-admin [-f config] key update ID [key options] "
	    "[--json]\n"
	    "       ccgate-admin [-f config] key rotate ID [--grace SECONDS] "
	    "[--json]\n"
	    "       ccgate-admin [-f config] user create|passwd NAME "
	    "(password on stdin)\n"
	    "       ccgate-admin [-f config] user list [--json]\n"
	    "       ccgate-admin [-f config] tenant show|purge NAME\n"
	    "       ccgate-admin [-f config] tenant set NAME "
	    "[--workspace-max-bytes N|default] [--workspace-max-files N|default]\n"
	    "       ccgate-admin [-f config] user disable|enable NAME\n"
	    "       ccgate-admin [-f config] usage [--key ID] [--days N] "
	    "[--json]\n"
	    "       ccgate-admin [-f config] purge [--usage-days N] "
	    "[--deleted-days N] [--json]\n"
	    "       ccgate-admin secret FILE\n"
	    "key options: --name NAME --status active|suspended "
	    "--expires TIME|none\n"
	    "    --rpm N|none --rpd N|none --tpd N|none --models A,B|all\n"
	    "    --max-tokens N|none --streaming yes|no --tools yes|no "
	    "--project P --description D\n"
	    "    --max-concurrent N|none --queue yes|no --signature yes|no\n");
}

/* Print usage and exit. */
static void __attribute__((noreturn))
usage(void)
{
	admin_help(stderr);
	exit(2);
}

/* Write a new random secret to path (mode 0600, never replaced). */
static int
admin_secret(const char *path)
{
	uint8_t	raw[32];
	char	hex[65];
	int	fd;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		fprintf(stderr, "ccgate-admin: %s: %s%s\n", path,
		    strerror(errno), errno == EEXIST ? " (kept: replacing "
		    "it would invalidate every key or admin token made with "
		    "it)" : "");
		return (errno == EEXIST ? 0 : 1);
	}
	randombytes_buf(raw, sizeof raw);
	sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
	sodium_memzero(raw, sizeof raw);
	hex[64] = '\n';
	if (util_write_all(fd, hex, sizeof hex) != 0) {
		fprintf(stderr, "ccgate-admin: write %s: %s\n", path,
		    strerror(errno));
		close(fd);
		return (1);
	}
	sodium_memzero(hex, sizeof hex);
	close(fd);
	printf("wrote a new secret to %s\n", path);
	return (0);
}

/* Return 1 for a migration file name: digits, '_', anything, ".sql". */
static int
admin_is_migration(const char *name)
{
	size_t	n = strlen(name), i;

	if (n < 6 || strcmp(name + n - 4, ".sql") != 0)
		return (0);
	for (i = 0; name[i] >= '0' && name[i] <= '9'; i++)
		;
	return (i > 0 && name[i] == '_');
}

/* qsort by name. */
static int
admin_cmp(const void *a, const void *b)
{
	return (strcmp(*(char *const *)a, *(char *const *)b));
}

/* Read a whole SQL file. */
static char *
admin_read(const char *path)
{
	char	*buf;
	FILE	*f;
	size_t	 n;

	if ((f = fopen(path, "re")) == NULL)
		return (NULL);
	if ((buf = malloc(ADMIN_MAX_SQL + 1)) == NULL) {
		fclose(f);
		return (NULL);
	}
	n = fread(buf, 1, ADMIN_MAX_SQL + 1, f);
	fclose(f);
	if (n > ADMIN_MAX_SQL) {
		free(buf);
		return (NULL);
	}
	buf[n] = '\0';
	return (buf);
}

/* Apply pending migrations. */
static int
admin_migrate(struct db *db)
{
	struct db_res	*res = NULL;
	struct dirent	*de;
	DIR		*d;
	char		**names = NULL, **nn, *cause = NULL, *sql, path[4096];
	size_t		 n = 0, i;
	long		 version;
	int		 rc = 1, applied = 0;

	if (db_exec_multi(db, "CREATE TABLE IF NOT EXISTS schema_migrations ("
	    "version INT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, "
	    "applied_at DATETIME NOT NULL) ENGINE=InnoDB", &cause) != 0) {
		fprintf(stderr, "ccgate-admin: %s\n", cause);
		free(cause);
		return (1);
	}
	if (db_run(db, &res, NULL, "SELECT GET_LOCK('ccgate_migrate', 60)",
	    "") != 0 || db_cell(res, 0, 0) == NULL ||
	    strcmp(db_cell(res, 0, 0), "1") != 0) {
		fprintf(stderr, "ccgate-admin: another migration is running\n");
		db_res_free(res);
		return (1);
	}
	db_res_free(res);
	res = NULL;
	if ((d = opendir(appconf->sql_dir)) == NULL) {
		fprintf(stderr, "ccgate-admin: %s: %s\n", appconf->sql_dir,
		    strerror(errno));
		goto out;
	}
	while ((de = readdir(d)) != NULL) {
		if (!admin_is_migration(de->d_name))
			continue;
		if ((nn = reallocarray(names, n + 1, sizeof *names)) == NULL ||
		    (nn[n] = strdup(de->d_name)) == NULL) {
			closedir(d);
			goto out;
		}
		names = nn;
		n++;
	}
	closedir(d);
	qsort(names, n, sizeof *names, admin_cmp);
	for (i = 0; i < n; i++) {
		version = strtol(names[i], NULL, 10);
		if (db_run(db, &res, NULL, "SELECT 1 FROM schema_migrations "
		    "WHERE version = ?", "i", (long long)version) != 0)
			goto out;
		if (res->nrows > 0) {
			db_res_free(res);
			res = NULL;
			continue;
		}
		db_res_free(res);
		res = NULL;
		snprintf(path, sizeof path, "%s/%s", appconf->sql_dir,
		    names[i]);
		if ((sql = admin_read(path)) == NULL) {
			fprintf(stderr, "ccgate-admin: cannot read %s\n", path);
			goto out;
		}
		if (db_exec_multi(db, sql, &cause) != 0) {
			fprintf(stderr, "ccgate-admin: %s: %s\n", names[i],
			    cause);
			free(cause);
			free(sql);
			goto out;
		}
		free(sql);
		if (db_run(db, NULL, NULL, "INSERT INTO schema_migrations "
		    "(version, name, applied_at) VALUES (?, ?, "
		    "UTC_TIMESTAMP())", "is", (long long)version,
		    names[i]) != 0)
			goto out;
		printf("applied %s\n", names[i]);
		applied++;
	}
	printf("schema up to date (%d applied, %zu known)\n", applied, n);
	rc = 0;
out:
	if (rc != 0 && db_error(db)[0] != '\0')
		fprintf(stderr, "ccgate-admin: %s\n", db_error(db));
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	db_res_free(res);
	if (db_run(db, &res, NULL, "SELECT RELEASE_LOCK('ccgate_migrate')",
	    "") == 0)
		db_res_free(res);
	return (rc);
}

/* Print a JSON value on one line; returns 0 or 1 (an exit status). */
static int
admin_print_json(json_t *v)
{
	int	rc;

	rc = v == NULL || json_dumpf(v, stdout, JSON_COMPACT |
	    JSON_REAL_PRECISION(12) | JSON_ENCODE_ANY) != 0;
	printf("\n");
	return (rc);
}

/* Report an operation's failure; returns 1 (an exit status). */
static int
admin_fail(const char *what, const struct op_error *e)
{
	fprintf(stderr, "ccgate-admin: %s: %s\n", what, e->msg);
	return (1);
}

/*
 * tenant show NAME, tenant set NAME [--workspace-max-bytes N|default]
 * [--workspace-max-files N|default]: a tenant's workspace limits (0: no
 * limit; default: ccgate.conf's), printed as JSON.
 */
static int
admin_tenant(struct db *db, int argc, char **argv)
{
	struct actor	 who;
	struct op_error	 e;
	json_t		*spec, *out = NULL;
	char		*end, *s;
	long long	 n;
	int		 i, rc;

	if (argc < 3)
		usage();
	if (strcmp(argv[1], "show") == 0 && argc == 3) {
		if ((out = tenant_get(db, argv[2], &e)) == NULL)
			return (admin_fail("tenant", &e));
	} else if (strcmp(argv[1], "purge") == 0 && argc == 3) {
		audit_cli_actor(&who);
		if (tenant_purge(db, &who, argv[2], &out, &e) != 0)
			return (admin_fail("tenant purge", &e));
	} else if (strcmp(argv[1], "set") == 0) {
		if ((spec = json_object()) == NULL)
			return (1);
		for (i = 3; i + 1 < argc; i += 2) {
			if (strcmp(argv[i], "--workspace-max-bytes") != 0 &&
			    strcmp(argv[i], "--workspace-max-files") != 0)
				usage();
			if (strcmp(argv[i + 1], "default") == 0)
				json_object_set_new(spec, argv[i] + 2,
				    json_null());
			else {
				errno = 0;
				n = strtoll(argv[i + 1], &end, 10);
				if (*end != '\0' || errno != 0 || n < 0) {
					fprintf(stderr, "ccgate-admin: %s: a "
					    "number or default\n", argv[i]);
					json_decref(spec);
					return (1);
				}
				json_object_set_new(spec, argv[i] + 2,
				    json_integer(n));
			}
		}
		if (i != argc)
			usage();
		/* --workspace-max-bytes -> workspace_max_bytes */
		{
			json_t		*fixed = json_object(), *v;
			const char	*k;
			char		 name[64];

			json_object_foreach(spec, k, v) {
				snprintf(name, sizeof name, "%s", k);
				for (s = name; *s != '\0'; s++)
					if (*s == '-')
						*s = '_';
				json_object_set(fixed, name, v);
			}
			json_decref(spec);
			spec = fixed;
		}
		audit_cli_actor(&who);
		rc = tenant_update(db, &who, argv[2], spec, &out, &e);
		json_decref(spec);
		if (rc != 0)
			return (admin_fail("tenant", &e));
	} else
		usage();
	s = json_dumps(out, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(out);
	if (s == NULL)
		return (1);
	printf("%s\n", s);
	free(s);
	return (0);
}

/* A limit option: "none" is null (unlimited), else a number. */
static json_t *
admin_limit(const char *opt, const char *v)
{
	char		*end;
	long long	 n;

	if (strcmp(v, "none") == 0)
		return (json_null());
	n = strtoll(v, &end, 10);
	if (*v == '\0' || *end != '\0' || n < 0) {
		fprintf(stderr, "ccgate-admin: --%s: a number or none\n", opt);
		exit(2);
	}
	return (json_integer(n));
}

/* A yes/no option. */
static json_t *
admin_yesno(const char *opt, const char *v)
{
	if (strcmp(v, "yes") == 0)
		return (json_true());
	if (strcmp(v, "no") == 0)
		return (json_false());
	fprintf(stderr, "ccgate-admin: --%s: yes or no\n", opt);
	exit(2);
}

/* Set spec.group.name (group NULL: spec.name). */
static void
admin_set(json_t *spec, const char *group, const char *name, json_t *v)
{
	json_t	*g = spec;

	if (group != NULL) {
		if ((g = json_object_get(spec, group)) == NULL) {
			g = json_object();
			json_object_set_new(spec, group, g);
		}
	}
	json_object_set_new(g, name, v);
}

/* The comma list of --models as a JSON array ("all": null). */
static json_t *
admin_models(const char *v)
{
	json_t	*list;
	char	*copy, *tok, *save = NULL;

	if (strcmp(v, "all") == 0)
		return (json_null());
	if ((list = json_array()) == NULL || (copy = strdup(v)) == NULL)
		exit(1);
	for (tok = strtok_r(copy, ",", &save); tok != NULL;
	    tok = strtok_r(NULL, ",", &save))
		json_array_append_new(list, json_string(tok));
	free(copy);
	return (list);
}

/* How a key option's value becomes JSON. */
enum admin_kind {
	KIND_STRING,
	KIND_LIMIT,		/* a number, or none: null */
	KIND_YESNO,
	KIND_MODELS,		/* a comma list, or all: null */
	KIND_TIME		/* a time, or none: null */
};

/* Key options and where each goes in the spec keys.c takes. */
static const struct admin_keyopt {
	const char	*name;
	const char	*group;		/* NULL: the top level */
	const char	*field;
	enum admin_kind	 kind;
} admin_keyopts[] = {
	{ "name", NULL, "name", KIND_STRING },
	{ "status", NULL, "status", KIND_STRING },
	{ "expires", NULL, "expires_at", KIND_TIME },
	{ "user", "metadata", "user_id", KIND_STRING },
	{ "project", "metadata", "project", KIND_STRING },
	{ "description", "metadata", "description", KIND_STRING },
	{ "rpm", "usage_limit", "requests_per_minute", KIND_LIMIT },
	{ "rpd", "usage_limit", "requests_per_day", KIND_LIMIT },
	{ "tpd", "usage_limit", "tokens_per_day", KIND_LIMIT },
	{ "models", "permissions", "models", KIND_MODELS },
	{ "max-tokens", "permissions", "max_tokens", KIND_LIMIT },
	{ "streaming", "permissions", "allow_streaming", KIND_YESNO },
	{ "tools", "permissions", "allow_tools", KIND_YESNO },
	{ "max-concurrent", "usage_limit", "max_concurrent_requests",
	    KIND_LIMIT },
	{ "queue", "usage_limit", "queue", KIND_YESNO },
	{ "signature", NULL, "require_signature", KIND_YESNO },
};
#define ADMIN_NKEYOPTS	(sizeof admin_keyopts / sizeof admin_keyopts[0])
#define ADMIN_OPT_GRACE	'g'
#define ADMIN_OPT_JSON	'j'
#define ADMIN_OPT_KEY	256	/* + the index in admin_keyopts */

/* The JSON value of a key option. */
static json_t *
admin_keyopt_value(const struct admin_keyopt *o, const char *v)
{
	switch (o->kind) {
	case KIND_LIMIT:
		return (admin_limit(o->name, v));
	case KIND_YESNO:
		return (admin_yesno(o->name, v));
	case KIND_MODELS:
		return (admin_models(v));
	case KIND_TIME:
		return (strcmp(v, "none") == 0 ? json_null() : json_string(v));
	case KIND_STRING:
		break;
	}
	return (json_string(v));
}

/*
 * Parse key options (create and update) into a spec for keys.c.  Leaves
 * optind at the first operand.  *as_json is set by --json; --grace is
 * taken only when grace is not NULL (rotate).
 */
static json_t *
admin_key_spec(int argc, char **argv, int *as_json, long long *grace)
{
	struct option	 opts[ADMIN_NKEYOPTS + 3];
	json_t		*spec = json_object();
	char		*end;
	size_t		 i;
	int		 ch;

	if (spec == NULL)
		exit(1);
	memset(opts, 0, sizeof opts);
	for (i = 0; i < ADMIN_NKEYOPTS; i++) {
		opts[i].name = admin_keyopts[i].name;
		opts[i].has_arg = required_argument;
		opts[i].val = ADMIN_OPT_KEY + (int)i;
	}
	opts[i++] = (struct option){ "grace", required_argument, NULL,
	    ADMIN_OPT_GRACE };
	opts[i] = (struct option){ "json", no_argument, NULL, ADMIN_OPT_JSON };
	optind = 0;	/* glibc: start over, permuting options */
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (ch >= ADMIN_OPT_KEY && ch < ADMIN_OPT_KEY +
		    (int)ADMIN_NKEYOPTS) {
			admin_set(spec, admin_keyopts[ch - ADMIN_OPT_KEY].group,
			    admin_keyopts[ch - ADMIN_OPT_KEY].field,
			    admin_keyopt_value(&admin_keyopts[ch -
			    ADMIN_OPT_KEY], optarg));
		} else if (ch == ADMIN_OPT_GRACE && grace != NULL) {
			*grace = strtoll(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0')
				usage();
		} else if (ch == ADMIN_OPT_JSON)
			*as_json = 1;
		else
			usage();
	}
	return (spec);
}

/* Print a key for people (as_json 0) or scripts. */
static int
admin_key_print(json_t *k, const char *secret, int as_json)
{
	json_t	*lim, *perm;
	char	*models;

	if (as_json) {
		if (secret != NULL)
			json_object_set_new(k, "key", json_string(secret));
		return (admin_print_json(k));
	}
	lim = json_object_get(k, "usage_limit");
	perm = json_object_get(k, "permissions");
	models = json_dumps(json_object_get(perm, "models"), JSON_ENCODE_ANY);
	printf("%s  %s  [%s]  tenant %s\n", json_string_value(json_object_get(
	    k, "id")), json_string_value(json_object_get(k, "name")),
	    json_string_value(json_object_get(k, "status")),
	    json_string_value(json_object_get(k, "tenant")));
	printf("  created %s, expires %s, last used %s\n",
	    json_string_value(json_object_get(k, "created_at")),
	    json_string_value(json_object_get(k, "expires_at")) ?
	    json_string_value(json_object_get(k, "expires_at")) : "never",
	    json_string_value(json_object_get(k, "last_used_at")) ?
	    json_string_value(json_object_get(k, "last_used_at")) : "never");
	printf("  limits: %lld/min, %lld/day, %lld tokens/day (-1: none)\n",
	    json_is_null(json_object_get(lim, "requests_per_minute")) ? -1LL :
	    (long long)json_integer_value(json_object_get(lim,
	    "requests_per_minute")),
	    json_is_null(json_object_get(lim, "requests_per_day")) ? -1LL :
	    (long long)json_integer_value(json_object_get(lim,
	    "requests_per_day")),
	    json_is_null(json_object_get(lim, "tokens_per_day")) ? -1LL :
	    (long long)json_integer_value(json_object_get(lim,
	    "tokens_per_day")));
	printf("  models %s, streaming %s, tools %s\n", models != NULL &&
	    strcmp(models, "null") != 0 ? models : "all",
	    json_is_true(json_object_get(perm, "allow_streaming")) ? "yes" :
	    "no", json_is_true(json_object_get(perm, "allow_tools")) ? "yes" :
	    "no");
	free(models);
	printf("  concurrency %lld (-1: none), %s at the cap, signatures "
	    "%s\n", json_is_null(json_object_get(lim,
	    "max_concurrent_requests")) ? -1LL : (long long)json_integer_value(
	    json_object_get(lim, "max_concurrent_requests")),
	    json_is_false(json_object_get(lim, "queue")) ? "429" : "queue",
	    json_is_true(json_object_get(k, "require_signature")) ?
	    "required" : "not required");
	if (secret != NULL) {
		printf("key: %s\n", secret);
		printf("This is the only time the key is shown: store it "
		    "now.\n");
	}
	if (json_string_value(json_object_get(k, "signing_secret")) != NULL) {
		printf("signing secret: %s\n", json_string_value(
		    json_object_get(k, "signing_secret")));
		printf("This is the only time the signing secret is shown: "
		    "store it now.\n");
	}
	return (0);
}

/* key create|update|rotate|revoke|show|list ... */
static int
admin_key(struct db *db, int argc, char **argv)
{
	struct actor	 who;
	struct op_error	 e;
	struct keyrec	 k;
	json_t		*spec = NULL, *out = NULL, *v;
	const char	*verb = argv[1], *id = NULL, *status, *user;
	char		 key[KEY_LEN + 1];
	long long	 grace = appconf->rotate_grace_s;
	int		 as_json = 0, rc = 1;
	size_t		 i;

	audit_cli_actor(&who);
	argc--;
	argv++;
	spec = admin_key_spec(argc, argv, &as_json,
	    strcmp(verb, "rotate") == 0 ? &grace : NULL);
	if (strcmp(verb, "create") == 0 || strcmp(verb, "list") == 0) {
		if (optind != argc)
			usage();
	} else {
		if (optind + 1 != argc)
			usage();
		id = argv[optind];
	}
	if (strcmp(verb, "create") == 0) {
		if (keys_create(db, &who, spec, key, &out, &e) != 0)
			rc = admin_fail("key create", &e);
		else
			rc = admin_key_print(out, key, as_json);
		sodium_memzero(key, sizeof key);
	} else if (strcmp(verb, "update") == 0) {
		if (json_object_size(spec) == 0)
			usage();
		if (keys_update(db, &who, id, spec, &out, &e) != 0)
			rc = admin_fail("key update", &e);
		else
			rc = admin_key_print(out, NULL, as_json);
	} else if (strcmp(verb, "rotate") == 0) {
		if (json_object_size(spec) != 0)
			usage();
		if (keys_rotate(db, &who, id, grace, key, &out, &e) != 0)
			rc = admin_fail("key rotate", &e);
		else
			rc = admin_key_print(out, key, as_json);
		sodium_memzero(key, sizeof key);
	} else if (strcmp(verb, "revoke") == 0 || strcmp(verb, "show") == 0) {
		if (json_object_size(spec) != 0)
			usage();
		if (verb[0] == 'r' && keys_revoke(db, &who, id, &out, &e) != 0)
			rc = admin_fail("key revoke", &e);
		else if (verb[0] == 's' && keys_load(db, id, 0, &k, &e) != 0)
			rc = admin_fail("key show", &e);
		else {
			if (out == NULL) {
				out = keys_json(&k);
				keyrec_clear(&k);
			}
			rc = admin_key_print(out, NULL, as_json);
		}
	} else if (strcmp(verb, "list") == 0) {
		status = json_string_value(json_object_get(spec, "status"));
		user = json_string_value(json_object_get(json_object_get(spec,
		    "metadata"), "user_id"));
		if (json_object_size(spec) != (size_t)(status != NULL) +
		    (size_t)(user != NULL))
			usage();
		if ((out = keys_list(db, status, user, 1000, 0, &e)) == NULL)
			rc = admin_fail("key list", &e);
		else if (as_json)
			rc = admin_print_json(json_object_get(out, "keys"));
		else {
			rc = 0;
			json_array_foreach(json_object_get(out, "keys"), i, v) {
				rc |= admin_key_print(v, NULL, 0);
			}
		}
	} else
		usage();
	json_decref(out);
	json_decref(spec);
	return (rc);
}

/* Read a password: the first line of standard input. */
static char *
admin_read_password(void)
{
	char	*line = NULL;
	size_t	 cap = 0;

	if (isatty(STDIN_FILENO))
		fprintf(stderr, "password (12 characters or more): ");
	if (getline(&line, &cap, stdin) <= 0) {
		free(line);
		fprintf(stderr, "ccgate-admin: no password on standard "
		    "input\n");
		return (NULL);
	}
	line[strcspn(line, "\r\n")] = '\0';
	return (line);
}

/* user create|passwd|disable|enable NAME, user list */
static int
admin_user(struct db *db, int argc, char **argv)
{
	struct actor	 who;
	struct op_error	 e;
	json_t		*list, *u;
	char		*pw = NULL;
	int		 rc = 1, as_json = argc == 3 &&
			     strcmp(argv[2], "--json") == 0;
	size_t		 i;

	audit_cli_actor(&who);
	if (strcmp(argv[1], "list") == 0 && (argc == 2 || as_json)) {
		if ((list = admuser_list(db, &e)) == NULL)
			return (admin_fail("user list", &e));
		if (as_json)
			rc = admin_print_json(list);
		else {
			json_array_foreach(list, i, u) {
				printf("%s  [%s]  created %s, last login %s\n",
				    json_string_value(json_object_get(u,
				    "username")), json_string_value(
				    json_object_get(u, "status")),
				    json_string_value(json_object_get(u,
				    "created_at")), json_string_value(
				    json_object_get(u, "last_login_at")) ?
				    json_string_value(json_object_get(u,
				    "last_login_at")) : "never");
			}
			rc = 0;
		}
		json_decref(list);
		return (rc);
	}
	if (argc != 3)
		usage();
	if (strcmp(argv[1], "create") == 0 || strcmp(argv[1], "passwd") == 0) {
		if ((pw = admin_read_password()) == NULL)
			return (1);
		if (argv[1][0] == 'c')
			rc = admuser_create(db, &who, argv[2], pw, &e);
		else
			rc = admuser_change(db, &who, argv[2], pw, NULL, &e);
		sodium_memzero(pw, strlen(pw));
		free(pw);
	} else if (strcmp(argv[1], "disable") == 0)
		rc = admuser_change(db, &who, argv[2], NULL, "disabled", &e);
	else if (strcmp(argv[1], "enable") == 0)
		rc = admuser_change(db, &who, argv[2], NULL, "active", &e);
	else
		usage();
	if (rc != 0)
		return (admin_fail(argv[1], &e));
	printf("administrator %s: %s done\n", argv[2], argv[1]);
	return (0);
}

/* A number option of usage and purge. */
static long long
admin_days(const char *opt, const char *v)
{
	char		*end;
	long long	 n = strtoll(v, &end, 10);

	if (*v == '\0' || *end != '\0' || n < 1 || n > 36500) {
		fprintf(stderr, "ccgate-admin: --%s: 1 to 36500\n", opt);
		exit(2);
	}
	return (n);
}

/* usage [--key ID] [--days N] [--json]: per key and day, from the view. */
static int
admin_usage(struct db *db, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "key", required_argument, NULL, 'k' },
		{ "days", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 }
	};
	struct db_res	*res;
	const char	*key = NULL;
	long long	 days = 7;
	json_t		*rows;
	int		 ch, as_json = 0, rc;
	size_t		 i;

	optind = 0;	/* glibc: start over, permuting options */
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'k':
			key = optarg;
			break;
		case 'd':
			days = admin_days("days", optarg);
			break;
		case 'j':
			as_json = 1;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (db_run(db, &res, NULL, "SELECT key_id, key_name, day, requests, "
	    "errors, input_tokens, output_tokens, total_tokens, cost_usd, "
	    "avg_duration_ms FROM v_key_usage_daily WHERE (? IS NULL OR "
	    "key_id = ?) AND day > UTC_DATE() - INTERVAL ? DAY ORDER BY day, "
	    "key_id", "ssi", key, key, days) != 0) {
		fprintf(stderr, "ccgate-admin: usage: %s\n", db_error(db));
		return (1);
	}
	if (!as_json) {
		printf("%-10s  %-16s  %-20s %8s %7s %12s %10s\n", "day", "key",
		    "name", "requests", "errors", "tokens", "cost_usd");
		for (i = 0; i < res->nrows; i++)
			printf("%-10s  %-16s  %-20.20s %8s %7s %12s %10s\n",
			    db_cell(res, i, 2), db_cell(res, i, 0),
			    db_cell(res, i, 1) ? db_cell(res, i, 1) : "-",
			    db_cell(res, i, 3), db_cell(res, i, 4),
			    db_cell(res, i, 7), db_cell(res, i, 8));
		db_res_free(res);
		return (0);
	}
	rows = json_array();
	for (i = 0; rows != NULL && i < res->nrows; i++)
		json_array_append_new(rows, json_pack("{s:s, s:s?, s:s, s:I, "
		    "s:I, s:I, s:I, s:I, s:f, s:I}", "key_id", db_cell(res, i, 0),
		    "key_name", db_cell(res, i, 1), "day", db_cell(res, i, 2),
		    "requests", (json_int_t)strtoll(db_cell(res, i, 3), NULL, 10),
		    "errors", (json_int_t)strtoll(db_cell(res, i, 4), NULL, 10),
		    "input_tokens", (json_int_t)strtoll(db_cell(res, i, 5), NULL,
		    10), "output_tokens", (json_int_t)strtoll(db_cell(res, i, 6),
		    NULL, 10), "total_tokens", (json_int_t)strtoll(db_cell(res,
		    i, 7), NULL, 10), "cost_usd", strtod(db_cell(res, i, 8),
		    NULL), "avg_duration_ms", (json_int_t)strtoll(db_cell(res,
		    i, 9), NULL, 10)));
	db_res_free(res);
	rc = admin_print_json(rows);
	json_decref(rows);
	return (rc);
}

/*
 * Run a "DELETE ... LIMIT 10000" until it deletes fewer (types: "" or "i"
 * for its one parameter, arg), so that a big purge never holds long locks
 * nor makes a writeset too big for Galera.  *total counts the rows.
 */
static int
admin_delete_batches(struct db *db, const char *sql, const char *types,
    long long arg, uint64_t *total)
{
	uint64_t	n;

	*total = 0;
	do {
		if (db_run(db, NULL, &n, sql, types, arg) != 0)
			return (-1);
		*total += n;
	} while (n == 10000);
	return (0);
}

/* A key to mark expired (admin_expire_tx). */
struct admin_expire {
	const struct actor	*who;
	const char		*id;
	uint64_t		 n;	/* 1 if it was */
};

/* Mark a key whose time is past expired, audited, in one transaction. */
static int
admin_expire_tx(struct db *db, void *arg)
{
	struct admin_expire	*a = arg;
	json_t			*before, *after;
	int			 rc = 0;

	if (db_run(db, NULL, &a->n, "UPDATE api_keys SET status = 'expired' "
	    "WHERE id = ? AND status = 'active'", "s", a->id) != 0)
		return (-1);
	if (a->n != 1)
		return (0);
	before = json_pack("{s:s}", "status", "active");
	after = json_pack("{s:s}", "status", "expired");
	if (audit_record(db, a->who, "key.expire", "api_key", a->id, before,
	    after) != 0)
		rc = -1;
	json_decref(before);
	json_decref(after);
	return (rc);
}

/*
 * purge [--usage-days N] [--deleted-days N] [--json]: delete usage rows
 * older than N days (default 90) and conversations deleted more than N
 * days ago (default 30); mark keys past their expiry as expired (each
 * audited); drop quota windows and login failures that no longer count.
 */
static int
admin_purge(struct db *db, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "usage-days", required_argument, NULL, 'u' },
		{ "deleted-days", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 }
	};
	struct actor	 who;
	struct db_res	*res = NULL;
	long long	 udays = 90, ddays = 30;
	uint64_t	 rows = 0, convs = 0, windows = 0, fails = 0;
	uint64_t	 nonces = 0, idem = 0;
	struct admin_expire	 ex;
	size_t		 i, expired = 0;
	json_t		*after;
	int		 ch, as_json = 0, rc = 1;

	optind = 0;	/* glibc: start over, permuting options */
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'u':
			udays = admin_days("usage-days", optarg);
			break;
		case 'd':
			ddays = admin_days("deleted-days", optarg);
			break;
		case 'j':
			as_json = 1;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	audit_cli_actor(&who);
	if (admin_delete_batches(db, "DELETE FROM usage_logs WHERE "
	    "created_at < UTC_TIMESTAMP() - INTERVAL ? DAY LIMIT 10000", "i",
	    udays, &rows) != 0 ||
	    admin_delete_batches(db, "DELETE FROM signature_nonces WHERE "
	    "expires_at < UTC_TIMESTAMP() LIMIT 10000", "", 0, &nonces) != 0 ||
	    admin_delete_batches(db, "DELETE FROM idempotency_keys WHERE "
	    "expires_at < UTC_TIMESTAMP() AND lease_until < UTC_TIMESTAMP() "
	    "LIMIT 10000", "", 0, &idem) != 0)
		goto fail;
	if (db_run(db, NULL, &convs, "DELETE FROM conversations WHERE "
	    "deleted_at < UTC_TIMESTAMP() - INTERVAL ? DAY", "i", ddays) != 0 ||
	    db_run(db, NULL, &windows, "DELETE FROM key_quota_windows WHERE "
	    "window_start < UTC_TIMESTAMP() - INTERVAL 2 DAY", "") != 0 ||
	    db_run(db, NULL, NULL, "DELETE FROM quota_reservations WHERE "
	    "day < UTC_DATE() - INTERVAL 2 DAY", "") != 0 ||
	    db_run(db, NULL, &fails, "DELETE FROM admin_login_failures WHERE "
	    "last_failure_at < UTC_TIMESTAMP() - INTERVAL 1 DAY", "") != 0)
		goto fail;
	if (db_run(db, &res, NULL, "SELECT id FROM api_keys WHERE status = "
	    "'active' AND expires_at <= UTC_TIMESTAMP()", "") != 0)
		goto fail;
	for (i = 0; i < res->nrows; i++) {
		ex.who = &who;
		ex.id = db_cell(res, i, 0);
		ex.n = 0;
		if (db_tx(db, admin_expire_tx, &ex) != 0)
			goto fail;
		expired += ex.n;
	}
	if (as_json) {
		after = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
		    "usage_rows", (json_int_t)rows, "conversations",
		    (json_int_t)convs, "keys_expired", (json_int_t)expired,
		    "quota_windows", (json_int_t)windows, "login_failures",
		    (json_int_t)fails, "signature_nonces", (json_int_t)nonces,
		    "idempotency_keys", (json_int_t)idem);
		rc = admin_print_json(after);
		json_decref(after);
	} else {
		printf("purged %llu usage rows (older than %lld days), %llu "
		    "deleted conversations (older than %lld days), %llu quota "
		    "windows, %llu login failures, %llu signature nonces, "
		    "%llu idempotency keys; %zu keys expired\n",
		    (unsigned long long)rows, udays, (unsigned long long)convs,
		    ddays, (unsigned long long)windows,
		    (unsigned long long)fails, (unsigned long long)nonces,
		    (unsigned long long)idem, expired);
		rc = 0;
	}
	db_res_free(res);
	return (rc);
fail:
	fprintf(stderr, "ccgate-admin: purge: %s\n", db_error(db));
	db_res_free(res);
	return (1);
}

int
main(int argc, char **argv)
{
	const char	*path = SYSCONFDIR "/ccgate/ccgate.conf";
	struct db	*db;
	char		*cause = NULL;
	int		 ch, rc;

	log_init("ccgate-admin", 0);
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0)) {
		admin_help(stdout);
		return (fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1);
	}
	while ((ch = getopt(argc, argv, "+f:")) != -1) {
		switch (ch) {
		case 'f':
			path = optarg;
			break;
		default:
			usage();
		}
	}
	argc -= optind;
	argv += optind;
	if (argc < 1)
		usage();
	if (sodium_init() < 0) {
		fprintf(stderr, "ccgate-admin: libsodium failed\n");
		return (1);
	}
	if (strcmp(argv[0], "secret") == 0) {
		if (argc != 2)
			usage();
		return (admin_secret(argv[1]));
	}
	if (strcmp(argv[0], "migrate") != 0 && strcmp(argv[0], "usage") != 0 &&
	    strcmp(argv[0], "purge") != 0 && (argc < 2 ||
	    (strcmp(argv[0], "key") != 0 && strcmp(argv[0], "user") != 0 &&
	    strcmp(argv[0], "tenant") != 0)))
		usage();
	if ((appconf = appconf_load(path, &cause)) == NULL) {
		fprintf(stderr, "ccgate-admin: %s\n", cause);
		return (1);
	}
	if (mysql_library_init(0, NULL, NULL) != 0 ||
	    (db = db_thread()) == NULL) {
		fprintf(stderr, "ccgate-admin: cannot initialise MariaDB\n");
		return (1);
	}
	if (db_connect(db, &cause) != 0) {
		fprintf(stderr, "ccgate-admin: database: %s\n", cause);
		free(cause);
		return (1);
	}
	if (strcmp(argv[0], "migrate") == 0 && argc == 1)
		rc = admin_migrate(db);
	else if (strcmp(argv[0], "key") == 0)
		rc = admin_key(db, argc, argv);
	else if (strcmp(argv[0], "user") == 0)
		rc = admin_user(db, argc, argv);
	else if (strcmp(argv[0], "tenant") == 0)
		rc = admin_tenant(db, argc, argv);
	else if (strcmp(argv[0], "usage") == 0)
		rc = admin_usage(db, argc, argv);
	else if (strcmp(argv[0], "purge") == 0)
		rc = admin_purge(db, argc, argv);
	else
		usage();
	db_end();
	mysql_library_end();
	appconf_free(appconf);
	return (rc);
}
