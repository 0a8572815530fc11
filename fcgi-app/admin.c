/*
 * ccgate-admin: the operator's command line.
 *
 *   ccgate-admin [-f config] migrate
 *   ccgate-admin [-f config] key create --name NAME [--user USER] [--json]
 *   ccgate-admin secret FILE
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

#include "app.h"
#include "log.h"

#define ADMIN_MAX_SQL	(4 * 1024 * 1024)

/* Print usage and exit. */
static void __attribute__((noreturn))
usage(void)
{
	fprintf(stderr,
	    "usage: ccgate-admin [-f config] migrate\n"
	    "       ccgate-admin [-f config] key create --name NAME "
	    "[--user USER] [--json]\n"
	    "       ccgate-admin secret FILE\n");
	exit(2);
}

/* Write a new random hashing secret to path (mode 0600, never replaced). */
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
		    "it would invalidate every key)" : "");
		return (errno == EEXIST ? 0 : 1);
	}
	randombytes_buf(raw, sizeof raw);
	sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
	sodium_memzero(raw, sizeof raw);
	hex[64] = '\n';
	if (write(fd, hex, sizeof hex) != (ssize_t)sizeof hex) {
		fprintf(stderr, "ccgate-admin: write %s: %s\n", path,
		    strerror(errno));
		close(fd);
		return (1);
	}
	sodium_memzero(hex, sizeof hex);
	close(fd);
	printf("wrote a new key hashing secret to %s\n", path);
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

/* key create --name NAME [--user USER] [--json] */
static int
admin_key_create(struct db *db, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "user", required_argument, NULL, 'u' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 }
	};
	const char	*name = NULL, *user = NULL;
	char		 key[KEY_LEN + 1], id[KEY_ID_LEN + 1], *cause = NULL;
	json_t		*out;
	int		 ch, as_json = 0;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'n':
			name = optarg;
			break;
		case 'u':
			user = optarg;
			break;
		case 'j':
			as_json = 1;
			break;
		default:
			usage();
		}
	}
	if (name == NULL || optind != argc)
		usage();
	if (auth_key_create(db, name, user, key, id, &cause) != 0) {
		fprintf(stderr, "ccgate-admin: key create: %s\n", cause);
		free(cause);
		return (1);
	}
	if (as_json) {
		out = json_pack("{s:s, s:s, s:s, s:s?}", "id", id, "key", key,
		    "name", name, "user_id", user);
		if (out == NULL || json_dumpf(out, stdout, JSON_COMPACT) != 0)
			return (1);
		json_decref(out);
		printf("\n");
	} else {
		printf("created key %s (%s)\n", id, name);
		printf("key: %s\n", key);
		printf("This is the only time the key is shown: store it now.\n");
	}
	sodium_memzero(key, sizeof key);
	return (0);
}

int
main(int argc, char **argv)
{
	const char	*path = SYSCONFDIR "/ccgate/ccgate.conf";
	struct db	*db;
	char		*cause = NULL;
	int		 ch, rc;

	log_init("ccgate-admin", 0);
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
	else if (argc >= 2 && strcmp(argv[0], "key") == 0 &&
	    strcmp(argv[1], "create") == 0)
		rc = admin_key_create(db, argc - 1, argv + 1);
	else
		usage();
	db_thread_free();
	mysql_library_end();
	appconf_free(appconf);
	return (rc);
}
