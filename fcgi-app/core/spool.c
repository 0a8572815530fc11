/*
 * The spool: an assistant's answer that the database did not take
 * within db_retry_ms (turn.c), and the usage records a process stopping
 * could not write (usage.c), are written to a file each in
 * spool_dir/<process> ("fcgi", "ws"), and a writer thread stores it when
 * the database answers again, oldest first.  The files outlive the
 * process: the next start stores what is left.
 *
 * A file is NNNNNNNNNNNNN-NNNNNN-<request id>.json (the wall-clock time
 * in ms and a counter, so names sort in the order answers came), written
 * under a name starting with '.' and renamed once whole and synced.  An
 * answer's holds the conversation, the request id, the answer and its
 * usage, and the conversation's history hash before and after the turn
 * and its CLI session; a usage record's holds it under "usage".  Storing
 * is idempotent: the message is inserted unless the conversation has an
 * assistant message of that request id already (or is deleted), a usage
 * row unless one of its request id is there, so a file stored twice (a
 * crash between the COMMIT and the unlink) adds nothing.  The session is
 * kept only if no other turn was stored meanwhile; else it is forgotten
 * and the next turn primes a new one from the stored messages.
 *
 * The directory is the service user's, mode 0700, the files 0600: the
 * answers are the tenants' and no other local user may read them.
 */
#include "config.h"

#include <sys/stat.h>

#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core.h"
#include "log.h"

#define SPOOL_RETRY_MS	1000	/* between two tries while the db is down */
#define SPOOL_MAX_FILES	65536	/* files stored per pass at most */

static struct {
	pthread_mutex_t	 lock;
	pthread_cond_t	 cond;
	pthread_t	 thread;
	char		 dir[PATH_MAX];
	unsigned int	 counter;
	int		 running;
	int		 stopping;
	int		 work;		/* a file was added */
} spool = { .lock = PTHREAD_MUTEX_INITIALIZER,
    .cond = PTHREAD_COND_INITIALIZER };

/* What stores a spooled usage record (usage.c's, not called by name). */
static int	(*spool_usage_fn)(struct db *, json_t *);

/* Set what stores a spooled usage record (usage_start). */
void
spool_usage_writer(int (*fn)(struct db *, json_t *))
{
	spool_usage_fn = fn;
}

/* Make dir (mode 0700) unless it exists; make it 0700 if it is more open. */
static int
spool_mkdir(const char *dir)
{
	struct stat	sb;

	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		log_warn("spool: mkdir %s", dir);
		return (-1);
	}
	if (lstat(dir, &sb) == -1 || !S_ISDIR(sb.st_mode)) {
		log_warnx("spool: %s is not a directory", dir);
		return (-1);
	}
	if (sb.st_uid != geteuid()) {
		log_warnx("spool: %s belongs to another user", dir);
		return (-1);
	}
	if ((sb.st_mode & 077) != 0 && chmod(dir, 0700) == -1) {
		log_warn("spool: chmod %s", dir);
		return (-1);
	}
	return (0);
}

/* Whether name is a spool file (not a partial one, not anything else). */
static int
spool_is_file(const char *name)
{
	size_t	n = strlen(name);

	return (name[0] >= '0' && name[0] <= '9' && n > 5 &&
	    strcmp(name + n - 5, ".json") == 0);
}

/* Compare two names for qsort. */
static int
spool_cmp(const void *a, const void *b)
{
	return (strcmp(*(char *const *)a, *(char *const *)b));
}

/* The spool's files, sorted (a NULL-terminated list), *n of them. */
static char **
spool_list(size_t *n)
{
	DIR		*d;
	struct dirent	*de;
	char		**v = NULL, **nv;
	size_t		 cap = 0;

	*n = 0;
	if ((d = opendir(spool.dir)) == NULL)
		return (NULL);
	while ((de = readdir(d)) != NULL && *n < SPOOL_MAX_FILES) {
		if (!spool_is_file(de->d_name))
			continue;
		if (*n + 1 >= cap) {
			cap = cap == 0 ? 16 : cap * 2;
			if ((nv = reallocarray(v, cap, sizeof *v)) == NULL)
				break;
			v = nv;
		}
		if ((v[*n] = strdup(de->d_name)) == NULL)
			break;
		(*n)++;
	}
	closedir(d);
	if (v != NULL) {
		qsort(v, *n, sizeof *v, spool_cmp);
		v[*n] = NULL;
	}
	return (v);
}

/* Store one spooled answer (in db_tx's transaction). */
static int
spool_store_tx(struct db *db, void *arg)
{
	json_t		*a = arg;
	const char	*conv = json_string_value(json_object_get(a, "conv"));
	const char	*rid = json_string_value(json_object_get(a,
			    "request_id"));
	const char	*prev = json_string_value(json_object_get(a,
			    "prev_hash"));
	const char	*hash = json_string_value(json_object_get(a, "hash"));
	const char	*session = json_string_value(json_object_get(a,
			    "session_id"));

	if (db_run(db, NULL, NULL, "INSERT INTO messages (conversation_id, "
	    "role, content, request_id, input_tokens, output_tokens, cost_usd, "
	    "created_at) SELECT id, 'assistant', ?, ?, ?, ?, ?, "
	    "FROM_UNIXTIME(? / 1000) FROM conversations WHERE id = ? AND "
	    "deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM messages WHERE "
	    "conversation_id = ? AND request_id = ? AND role = 'assistant')",
	    "ssiidisss", json_string_value(json_object_get(a, "content")),
	    rid, (long long)json_integer_value(json_object_get(a, "in")),
	    (long long)json_integer_value(json_object_get(a, "out")),
	    json_number_value(json_object_get(a, "cost")),
	    (long long)json_integer_value(json_object_get(a, "at_ms")), conv,
	    conv, rid) != 0)
		return (-1);
	/* MariaDB assigns left to right: the session sees the old hash. */
	if (db_run(db, NULL, NULL, "UPDATE conversations SET cli_session_id = "
	    "IF(history_hash <=> NULLIF(?, '') OR history_hash <=> ?, "
	    "NULLIF(?, ''), NULL), history_hash = IF(history_hash <=> "
	    "NULLIF(?, ''), ?, history_hash), updated_at = UTC_TIMESTAMP(3) "
	    "WHERE id = ? AND deleted_at IS NULL", "ssssss", prev, hash,
	    session != NULL ? session : "", prev, hash, conv) != 0)
		return (-1);
	return (0);
}

/*
 * Store a spooled usage record with the function usage.c gave
 * (spool_usage_writer; idempotent: request_id is unique).
 */
static int
spool_store_usage(struct db *db, const char *path, json_t *a)
{
	if (spool_usage_fn == NULL || spool_usage_fn(db,
	    json_object_get(a, "usage")) != 0) {
		json_decref(a);
		return (-1);
	}
	metrics_spool(-1);
	if (unlink(path) == -1)
		log_warn("spool: unlink %s", path);
	json_decref(a);
	return (0);
}

/*
 * Store the spool file name; remove it once stored (or when it is not a
 * readable answer: it is kept aside, renamed with a leading '#').
 * Returns 0, or -1 when the database did not take it.
 */
static int
spool_store(struct db *db, const char *name)
{
	json_t		*a;
	json_error_t	 err;
	char		 path[PATH_MAX], bad[PATH_MAX];
	const char	*conv;

	if ((size_t)snprintf(path, sizeof path, "%s/%s", spool.dir, name) >=
	    sizeof path)
		return (0);
	if ((a = json_load_file(path, 0, &err)) != NULL &&
	    json_is_object(json_object_get(a, "usage")))
		return (spool_store_usage(db, path, a));
	if (a == NULL ||
	    json_string_value(json_object_get(a, "conv")) == NULL ||
	    json_string_value(json_object_get(a, "request_id")) == NULL ||
	    json_string_value(json_object_get(a, "content")) == NULL ||
	    json_string_value(json_object_get(a, "hash")) == NULL) {
		log_warnx("spool: %s: not an answer (%s): set aside", path,
		    a == NULL ? err.text : "a field is missing");
		if ((size_t)snprintf(bad, sizeof bad, "%s/#%s", spool.dir,
		    name) >= sizeof bad || rename(path, bad) == -1)
			log_warn("spool: rename %s", path);
		json_decref(a);
		return (0);
	}
	if (db_tx(db, spool_store_tx, a) != 0) {
		json_decref(a);
		return (-1);
	}
	conv = json_string_value(json_object_get(a, "conv"));
	conv_uncache(conv);
	log_info("request %s: the spooled answer is stored (conversation %s)",
	    json_string_value(json_object_get(a, "request_id")), conv);
	metrics_spool(-1);
	if (unlink(path) == -1)
		log_warn("spool: unlink %s", path);
	json_decref(a);
	return (0);
}

/* Whether spool_stop was called. */
static int
spool_stopping(void)
{
	int	stopping;

	pthread_mutex_lock(&spool.lock);
	stopping = spool.stopping;
	pthread_mutex_unlock(&spool.lock);
	return (stopping);
}

/*
 * Store what the spool holds, oldest first; stop at the first the
 * database does not take (the ones after it wait: their order is kept).
 * Returns 0 when the spool is empty, -1 if not.
 */
static int
spool_drain(void)
{
	struct db	*db;
	char		**names;
	size_t		 n, i;
	int		 rc = 0;

	if ((names = spool_list(&n)) == NULL)
		return (0);
	db = db_thread();
	for (i = 0; i < n; i++) {
		if (rc == 0 && spool_stopping())
			rc = -1;	/* the rest at the next start */
		if (rc == 0 && spool_store(db, names[i]) != 0)
			rc = -1;
		free(names[i]);
	}
	free(names);
	db_release();
	return (rc);
}

/* The writer thread: store the spool when told, and every second while
 * it is not empty. */
static void *
spool_main(void *arg)
{
	struct timespec	ts;
	int		failed;

	(void)arg;
	failed = spool_drain() != 0;
	pthread_mutex_lock(&spool.lock);
	while (!spool.stopping) {
		if (!spool.work) {
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += failed ? SPOOL_RETRY_MS / 1000 : 60;
			(void)pthread_cond_timedwait(&spool.cond, &spool.lock,
			    &ts);
		}
		if (spool.stopping)
			break;
		spool.work = 0;
		pthread_mutex_unlock(&spool.lock);
		failed = spool_drain() != 0;
		pthread_mutex_lock(&spool.lock);
	}
	pthread_mutex_unlock(&spool.lock);
	return (NULL);
}

/* Remove the partial files (".NNN.tmp") a process that died left. */
static void
spool_clean(void)
{
	DIR		*d;
	struct dirent	*de;
	size_t		 n;

	if ((d = opendir(spool.dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		n = strlen(de->d_name);
		if (de->d_name[0] != '.' || n < 5 ||
		    strcmp(de->d_name + n - 4, ".tmp") != 0)
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == -1)
			log_warn("spool: unlink %s", de->d_name);
	}
	closedir(d);
}

/*
 * Open the spool of process name (spool_dir/name) and start its writer,
 * which stores at once what an earlier run left.  Without a spool (its
 * directory cannot be made) answers are kept only for db_retry_ms.
 */
void
spool_start(const char *name)
{
	char	**names;
	size_t	  n, i;

	if (spool_mkdir(appconf->spool_dir) != 0)
		goto off;
	if ((size_t)snprintf(spool.dir, sizeof spool.dir, "%s/%s",
	    appconf->spool_dir, name) >= sizeof spool.dir ||
	    spool_mkdir(spool.dir) != 0)
		goto off;
	spool_clean();
	if ((names = spool_list(&n)) != NULL) {
		for (i = 0; i < n; i++)
			free(names[i]);
		free(names);
		if (n > 0)
			log_info("spool: %zu answers of an earlier run to "
			    "store", n);
		metrics_spool((long)n);
	}
	if (pthread_create(&spool.thread, NULL, spool_main, NULL) != 0)
		fatalx("spool: pthread_create");
	spool.running = 1;
	return;
off:
	spool.dir[0] = '\0';
	log_warnx("spool: off (%s cannot be used): an answer the database "
	    "does not take within db_retry_ms is lost", appconf->spool_dir);
}

/* Stop the writer (the files stay for the next start). */
void
spool_stop(void)
{
	if (!spool.running)
		return;
	pthread_mutex_lock(&spool.lock);
	spool.stopping = 1;
	pthread_cond_signal(&spool.cond);
	pthread_mutex_unlock(&spool.lock);
	pthread_join(spool.thread, NULL);
	spool.running = 0;
}

/* Whether the spool takes files (its directory is open). */
int
spool_ready(void)
{
	return (spool.dir[0] != '\0');
}

/*
 * Write object a to the spool, named after request rid, synced, then
 * tell the writer.  Returns 0 once it is on disk, -1 if not.
 */
static int
spool_put(json_t *a, const char *rid)
{
	struct timespec	 ts;
	char		*text = NULL, tmp[PATH_MAX], path[PATH_MAX];
	uint64_t	 now;
	unsigned int	 seq;
	int		 fd = -1, rc = -1;

	if (!spool_ready() || strspn(rid, "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != strlen(rid))
		return (-1);
	/* The wall clock: names keep their order across a reboot. */
	clock_gettime(CLOCK_REALTIME, &ts);
	now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	pthread_mutex_lock(&spool.lock);
	seq = spool.counter++ % 1000000;
	pthread_mutex_unlock(&spool.lock);
	if ((size_t)snprintf(path, sizeof path, "%s/%013llu-%06u-%.64s.json",
	    spool.dir, (unsigned long long)now, seq, rid) >= sizeof path ||
	    (size_t)snprintf(tmp, sizeof tmp, "%s/.%013llu-%06u.tmp",
	    spool.dir, (unsigned long long)now, seq) >= sizeof tmp)
		return (-1);
	if (json_object_set_new(a, "at_ms", json_integer((json_int_t)now)) !=
	    0 || (text = json_dumps(a, JSON_COMPACT)) == NULL)
		goto out;
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC |
	    O_NOFOLLOW, 0600)) == -1) {
		log_warn("spool: %s", tmp);
		goto out;
	}
	if (util_write_all(fd, text, strlen(text)) == -1) {
		log_warn("spool: write %s", tmp);
		goto out;
	}
	if (fsync(fd) == -1 || close(fd) == -1) {
		log_warn("spool: sync %s", tmp);
		fd = -1;
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) == -1) {
		log_warn("spool: rename %s", tmp);
		goto out;
	}
	rc = 0;
	metrics_spool(1);
	pthread_mutex_lock(&spool.lock);
	spool.work = 1;
	pthread_cond_signal(&spool.cond);
	pthread_mutex_unlock(&spool.lock);
out:
	if (fd != -1)
		close(fd);
	if (rc != 0 && unlink(tmp) == -1 && errno != ENOENT)
		log_warn("spool: unlink %s", tmp);
	free(text);
	return (rc);
}

/*
 * Spool an answer the database did not take: request rid's assistant
 * message of conversation conv, with its usage, the conversation's history
 * hash before (prev) and after (hash) the turn and its CLI session (may
 * be NULL).  Returns 0 once it is on disk (synced), -1 if it is lost.
 */
int
spool_answer(const char *conv, const char *rid, const char *content,
    long long in, long long out, double cost, const char *prev,
    const char *hash, const char *session)
{
	json_t	*a;
	int	 rc;

	a = json_pack("{s:s, s:s, s:s, s:I, s:I, s:f, s:s, s:s, s:s?}",
	    "conv", conv, "request_id", rid, "content", content, "in",
	    (json_int_t)in, "out", (json_int_t)out, "cost", cost, "prev_hash",
	    prev, "hash", hash, "session_id", session);
	if (a == NULL)
		return (-1);
	rc = spool_put(a, rid);
	json_decref(a);
	return (rc);
}

/*
 * Spool a usage record (usage.c's, at exit, while the database does not
 * answer): object u (usage_to_json) goes under "usage".  Returns 0 once
 * on disk, -1 if not.
 */
int
spool_usage(json_t *u, const char *rid)
{
	json_t	*a;
	int	 rc;

	if ((a = json_pack("{s:O}", "usage", u)) == NULL)
		return (-1);
	rc = spool_put(a, rid);
	json_decref(a);
	return (rc);
}
