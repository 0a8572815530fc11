/*
 * MariaDB access.  Connections are pooled: a thread takes one on its
 * first db_thread() and gives it back with db_release(), at the end of
 * each request and before a turn waits on the pool daemon, so that the
 * thousand threads holding a thousand streams open share db_connections
 * connections (and their prepared statements) instead of holding one
 * each.  A thread that finds none free waits up to db_timeout_s.
 *
 * Each connection has timeouts; statements are prepared once per
 * connection and cached.  MYSQL_OPT_RECONNECT is not used (it silently
 * invalidates prepared statements): when the server has gone away,
 * outside a transaction, the connection is made again, the statement
 * prepared again and run once more.
 *
 * db_run's type string names each parameter:
 *   s	const char *	(NULL is SQL NULL)
 *   i	long long
 *   d	double
 *   b	const void *, size_t	(a blob)
 * Results come back as strings (NULL for SQL NULL) in a db_res.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <errmsg.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <sodium.h>

#include "core.h"
#include "log.h"

#define DB_MAX_PARAMS	32
#define DB_MAX_STMTS	64
/*
 * Tries of a transaction or statement the server rolled back, and the
 * first pause between two (doubled each time, with jitter, up to MAX).
 */
#define DB_TRIES	8
#define DB_PAUSE_MS	10
#define DB_PAUSE_MAX_MS	400
/* Galera: a node that is not ready (not in the primary component). */
#define DB_WSREP_NOT_READY	1047

struct db_stmt {
	char		*sql;
	MYSQL_STMT	*stmt;
};

struct db {
	MYSQL		*my;
	int		 in_tx;
	struct db_stmt	 stmts[DB_MAX_STMTS];
	int		 nstmts;
	char		 err[512];
	unsigned int	 errnum;	/* the last error's, 0 if none */
	int		 host;		/* index in db_hosts connected to */
	int		 probe;		/* connect: try the first host first */
	unsigned int	 gen;		/* db_hosts.gen when connected */
	int		 tries;		/* of the last db_tx */
	char		 why[160];	/* a failure, for clients */
};

/*
 * The hosts, the one in use (cur: the last a connection was made to) and
 * when the first is to be tried again while another is in use.
 */
static struct {
	pthread_mutex_t	 lock;
	struct db_host	 h[DB_MAX_HOSTS];
	int		 n;
	int		 cur;
	unsigned int	 gen;		/* changes when cur does */
	uint64_t	 failback_at;	/* ms, CLOCK_MONOTONIC */
	int		 galera;	/* the last connection's server is */
} hosts = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* A thread's part: the connection it holds, if any. */
struct db_local {
	struct db	*held;
};

/* The connections not held, the most recently used on top. */
static struct {
	pthread_mutex_t	  lock;
	pthread_cond_t	  freed;	/* CLOCK_MONOTONIC */
	struct db	**idle;
	size_t		  nidle;
	size_t		  made;
	size_t		  max;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER };

static pthread_key_t	db_key;
static pthread_once_t	db_once = PTHREAD_ONCE_INIT;

/* Close every statement and the connection. */
static void
db_disconnect(struct db *db)
{
	int	i;

	for (i = 0; i < db->nstmts; i++) {
		if (mysql_stmt_close(db->stmts[i].stmt) != 0)
			log_debug("mysql_stmt_close failed");
		free(db->stmts[i].sql);
	}
	db->nstmts = 0;
	if (db->my != NULL)
		mysql_close(db->my);
	db->my = NULL;
	db->in_tx = 0;
}

/* Put db back among the idle connections and wake one waiting thread. */
static void
db_give(struct db *db)
{
	if (db->in_tx) {
		log_warnx("database: a connection came back inside a "
		    "transaction; rolled back");
		(void)db_rollback(db);
	}
	pthread_mutex_lock(&pool.lock);
	pool.idle[pool.nidle++] = db;
	pthread_cond_signal(&pool.freed);
	pthread_mutex_unlock(&pool.lock);
}

/* Thread exit: give back what the thread holds. */
static void
db_destructor(void *arg)
{
	struct db_local	*l = arg;

	if (l->held != NULL)
		db_give(l->held);
	free(l);
	mysql_thread_end();
}

/*
 * The hosts: db_hosts, else db_host read the same way (one host, or a
 * list), else localhost; appconf checked them.
 */
static int
db_parse_hosts(const struct app_config *cf)
{
	char	*cause = NULL;

	if (cf->db_hosts == NULL && cf->db_host == NULL) {
		hosts.h[0].name = NULL;	/* localhost */
		hosts.h[0].port = (unsigned int)cf->db_port;
		hosts.n = 1;
		return (0);
	}
	hosts.n = appconf_hosts_parse(cf->db_hosts != NULL ? cf->db_hosts :
	    cf->db_host, cf->db_port, hosts.h, &cause);
	if (hosts.n < 0) {
		log_warnx("db_hosts: %s", cause);
		free(cause);
		return (-1);
	}
	return (0);
}

/* Create the thread-specific key and the pool once. */
static void
db_once_init(void)
{
	pthread_condattr_t	attr;

	if (pthread_key_create(&db_key, db_destructor) != 0 ||
	    pthread_condattr_init(&attr) != 0 ||
	    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
	    pthread_cond_init(&pool.freed, &attr) != 0)
		fatalx("db: pthread setup failed");
	pthread_condattr_destroy(&attr);
	if (db_parse_hosts(appconf) != 0)
		fatalx("db: the database hosts cannot be read");
	pool.max = (size_t)appconf->db_connections;
	if ((pool.idle = calloc(pool.max, sizeof *pool.idle)) == NULL)
		fatalx("db: out of memory");
}

/*
 * Whether connection db is to be made again: another connection moved to
 * another host (a failover or a fail-back) since it was made, or the time
 * came to try the first host again (one connection then does).
 */
static int
db_stale(struct db *db)
{
	int	stale;

	pthread_mutex_lock(&hosts.lock);
	stale = db->gen != hosts.gen;
	if (!stale && hosts.cur != 0 && util_now_ms() >= hosts.failback_at) {
		hosts.failback_at = util_now_ms() +
		    (uint64_t)appconf->db_failback_s * 1000;
		stale = db->probe = 1;
	}
	pthread_mutex_unlock(&hosts.lock);
	return (stale);
}

/*
 * Take an idle connection, or make a new handle while fewer than max
 * exist, or wait up to db_timeout_s for one.  NULL if none came.
 */
static struct db *
db_take(void)
{
	struct timespec	 until;
	struct db	*db = NULL;
	int		 rc = 0;

	if (clock_gettime(CLOCK_MONOTONIC, &until) != 0)
		return (NULL);
	until.tv_sec += appconf->db_timeout_s;
	pthread_mutex_lock(&pool.lock);
	while (pool.nidle == 0 && pool.made == pool.max && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&pool.freed, &pool.lock, &until);
	if (pool.nidle > 0)
		db = pool.idle[--pool.nidle];
	else if (pool.made < pool.max)
		pool.made++;
	else {
		pthread_mutex_unlock(&pool.lock);
		log_warnx("database: none of the %zu connections came free in "
		    "%ld s", pool.max, appconf->db_timeout_s);
		return (NULL);
	}
	pthread_mutex_unlock(&pool.lock);
	if (db == NULL && (db = calloc(1, sizeof *db)) == NULL) {
		pthread_mutex_lock(&pool.lock);
		pool.made--;
		pthread_cond_signal(&pool.freed);
		pthread_mutex_unlock(&pool.lock);
	}
	if (db != NULL && db->my != NULL && db_stale(db))
		db_disconnect(db);	/* connected again, lazily */
	return (db);
}

/*
 * Return the connection this thread holds, taking one from the pool if it
 * holds none (connected lazily, by the first statement).  NULL when none
 * came free in db_timeout_s, or out of memory.
 */
struct db *
db_thread(void)
{
	struct db_local	*l;

	pthread_once(&db_once, db_once_init);
	if ((l = pthread_getspecific(db_key)) == NULL) {
		if ((l = calloc(1, sizeof *l)) == NULL)
			return (NULL);
		if (mysql_thread_init() != 0 ||
		    pthread_setspecific(db_key, l) != 0) {
			free(l);
			return (NULL);
		}
	}
	if (l->held == NULL)
		l->held = db_take();
	return (l->held);
}

/*
 * Give this thread's connection back to the pool.  A pointer from an
 * earlier db_thread() must not be used after this.
 */
void
db_release(void)
{
	struct db_local	*l;

	pthread_once(&db_once, db_once_init);
	if ((l = pthread_getspecific(db_key)) == NULL || l->held == NULL)
		return;
	db_give(l->held);
	l->held = NULL;
}

/*
 * Connect up to n of the pool's connections now, so that the first
 * requests do not pay for it.  Returns how many are connected.
 */
int
db_warm(int n)
{
	struct db	**got;
	int		  i, ok = 0;

	if ((got = calloc((size_t)n, sizeof *got)) == NULL)
		return (0);
	pthread_once(&db_once, db_once_init);
	for (i = 0; i < n && (size_t)i < pool.max; i++) {
		if ((got[i] = db_take()) == NULL)
			break;
		if (db_connect(got[i], NULL) != 0) {
			i++;
			break;	/* the server is not there: later */
		}
		ok++;
	}
	while (i-- > 0)
		db_give(got[i]);
	free(got);
	return (ok);
}

/*
 * At exit, once no other thread uses the database: close and free every
 * connection.
 */
void
db_end(void)
{
	pthread_once(&db_once, db_once_init);
	db_release();
	pthread_mutex_lock(&pool.lock);
	if (pool.nidle != pool.made)
		log_warnx("database: %zu connections still held at exit",
		    pool.made - pool.nidle);
	while (pool.nidle > 0) {
		db_disconnect(pool.idle[--pool.nidle]);
		free(pool.idle[pool.nidle]);
		pool.made--;
	}
	pthread_mutex_unlock(&pool.lock);
}

/* Remember the last error. */
static void
db_set_error(struct db *db, const char *what, const char *msg)
{
	snprintf(db->err, sizeof db->err, "%s: %s", what, msg);
}

/* The last error, for logs (never shown to clients). */
const char *
db_error(struct db *db)
{
	return (db != NULL ? db->err : "no database connection came free");
}

/*
 * Run a query whose first row's column col is wanted (a variable, a
 * status); *out gets it ("" if none).  Returns 0 or -1.
 */
static int
db_query_value(MYSQL *my, const char *sql, unsigned int col, char *out,
    size_t len)
{
	MYSQL_RES	*r;
	MYSQL_ROW	 row;

	*out = '\0';
	if (mysql_query(my, sql) != 0 || (r = mysql_store_result(my)) == NULL)
		return (-1);
	if ((row = mysql_fetch_row(r)) != NULL && mysql_num_fields(r) > col &&
	    row[col] != NULL)
		snprintf(out, len, "%s", row[col]);
	mysql_free_result(r);
	return (0);
}

/*
 * Connect db to host i (or the socket) and set the session up: UTC; on a
 * Galera node, which must be ready (synced, in the primary component),
 * wsrep_sync_wait (db_sync_wait), so that a read sees what any node
 * committed before it.  Returns 0, or -1 (db->err says why).
 */
static int
db_connect_host(struct db *db, int i)
{
	struct app_config	*cf = appconf;
	unsigned int		 t = (unsigned int)cf->db_timeout_s;
	unsigned int		 rt = t * 6;
	char			 v[64], sql[64];
	long			 wait;
	int			 galera, was;

	if ((db->my = mysql_init(NULL)) == NULL) {
		db_set_error(db, "mysql_init", "out of memory");
		return (-1);
	}
	if (mysql_options(db->my, MYSQL_OPT_CONNECT_TIMEOUT, &t) != 0 ||
	    mysql_options(db->my, MYSQL_OPT_READ_TIMEOUT, &rt) != 0 ||
	    mysql_options(db->my, MYSQL_OPT_WRITE_TIMEOUT, &rt) != 0 ||
	    mysql_options(db->my, MYSQL_SET_CHARSET_NAME, "utf8mb4") != 0) {
		db_set_error(db, "mysql_options", mysql_error(db->my));
		goto fail;
	}
	if (mysql_real_connect(db->my, cf->db_socket != NULL ? NULL :
	    hosts.h[i].name, cf->db_user, cf->db_password, cf->db_name,
	    hosts.h[i].port, cf->db_socket, 0) == NULL) {
		db_set_error(db, "connect", mysql_error(db->my));
		goto fail;
	}
	if (mysql_query(db->my, "SET time_zone = '+00:00'") != 0) {
		db_set_error(db, "set time_zone", mysql_error(db->my));
		goto fail;
	}
	/* Not MariaDB with wsrep (the variable is unknown): no Galera. */
	galera = db_query_value(db->my, "SELECT @@wsrep_on", 0, v,
	    sizeof v) == 0 && strcmp(v, "1") == 0;
	pthread_mutex_lock(&hosts.lock);
	was = hosts.galera;
	hosts.galera = galera;
	pthread_mutex_unlock(&hosts.lock);
	if (!galera)
		return (0);
	if (!was)
		log_info("database: a Galera node: each session's "
		    "wsrep_sync_wait is %ld", cf->db_sync_wait < 0 ? 1 :
		    cf->db_sync_wait);
	if (db_query_value(db->my, "SHOW STATUS LIKE 'wsrep_ready'", 1, v,
	    sizeof v) != 0 || strcmp(v, "ON") != 0) {
		db_set_error(db, "connect", "a Galera node that is not ready "
		    "(wsrep_ready is not ON)");
		goto fail;
	}
	wait = cf->db_sync_wait < 0 ? 1 : cf->db_sync_wait;
	snprintf(sql, sizeof sql, "SET SESSION wsrep_sync_wait = %ld", wait);
	if (mysql_query(db->my, sql) != 0) {
		db_set_error(db, "set wsrep_sync_wait", mysql_error(db->my));
		goto fail;
	}
	return (0);
fail:
	mysql_close(db->my);
	db->my = NULL;
	return (-1);
}

/*
 * Connect if not connected: to the host in use, else to the others in
 * their order (a failover); while another is in use, the first is tried
 * first once every db_failback_s (a fail-back).  The host a connection
 * is made to becomes the one in use.
 */
int
db_connect(struct db *db, char **cause)
{
	uint64_t	 now;
	int		 start, i, k, was;

	if (db == NULL) {
		if (cause != NULL)
			*cause = strdup(db_error(db));
		return (-1);
	}
	if (db->my != NULL)
		return (0);
	now = util_now_ms();
	pthread_mutex_lock(&hosts.lock);
	start = hosts.cur;
	if (start != 0 && (db->probe || now >= hosts.failback_at)) {
		start = 0;
		hosts.failback_at = now + (uint64_t)appconf->db_failback_s *
		    1000;
	}
	db->probe = 0;
	pthread_mutex_unlock(&hosts.lock);
	for (k = 0; k < hosts.n; k++) {
		/* start first, then the others in order */
		i = k == 0 ? start : (k <= start ? k - 1 : k);
		if (db_connect_host(db, i) != 0) {
			if (hosts.n > 1)
				log_warnx("database host %d (%s): %s", i + 1,
				    hosts.h[i].name != NULL ? hosts.h[i].name :
				    "localhost", db->err);
			continue;
		}
		pthread_mutex_lock(&hosts.lock);
		was = hosts.cur;
		if (i != was) {
			hosts.cur = i;
			hosts.gen++;
			hosts.failback_at = now +
			    (uint64_t)appconf->db_failback_s * 1000;
		}
		db->host = i;
		db->gen = hosts.gen;
		pthread_mutex_unlock(&hosts.lock);
		if (i != was)
			log_warnx("database: now using host %d (%s), not host "
			    "%d", i + 1, hosts.h[i].name != NULL ?
			    hosts.h[i].name : "localhost", was + 1);
		return (0);
	}
	if (cause != NULL)
		*cause = strdup(db->err);
	return (-1);
}

/*
 * The database host in use: its position in db_hosts (1 for the first),
 * how many there are, and whether its server is a Galera node.
 */
void
db_host_in_use(int *pos, int *n, int *galera)
{
	pthread_once(&db_once, db_once_init);
	pthread_mutex_lock(&hosts.lock);
	*pos = hosts.cur + 1;
	*n = hosts.n;
	*galera = hosts.galera;
	pthread_mutex_unlock(&hosts.lock);
}

/* Return 1 if errno means the connection is gone and a retry may help. */
static int
db_gone(unsigned int e)
{
	return (e == CR_SERVER_GONE_ERROR || e == CR_SERVER_LOST ||
	    e == CR_CONNECTION_ERROR || e == CR_CONN_HOST_ERROR ||
	    e == ER_UNKNOWN_STMT_HANDLER || e == CR_SERVER_LOST_EXTENDED ||
	    e == ER_CONNECTION_KILLED || e == ER_SERVER_SHUTDOWN);
}

/* Pause before try number tries + 1: doubling, with jitter. */
static void
db_pause(int tries)
{
	struct timespec	 ts;
	long		 ms = DB_PAUSE_MS << (tries < 6 ? tries - 1 : 5);

	if (ms > DB_PAUSE_MAX_MS)
		ms = DB_PAUSE_MAX_MS;
	ms = ms / 2 + (long)randombytes_uniform((uint32_t)ms);
	ts.tv_sec = ms / 1000;
	ts.tv_nsec = (ms % 1000) * 1000000L;
	(void)nanosleep(&ts, NULL);
}

/* Say in db->why what the last failure was, after tries tries. */
static void
db_set_why(struct db *db, int tries)
{
	const char	*what;

	switch (db->errnum) {
	case 1213:
		what = "deadlock or Galera certification conflict";
		break;
	case 1205:
		what = "lock wait timeout";
		break;
	case DB_WSREP_NOT_READY:
		what = "the Galera node is not ready";
		break;
	default:
		if (db->my == NULL || db_gone(db->errnum)) {
			snprintf(db->why, sizeof db->why, "the database does "
			    "not answer");
			return;
		}
		snprintf(db->why, sizeof db->why, "the database failed");
		return;
	}
	snprintf(db->why, sizeof db->why, "the database refused the write "
	    "after %d %s (%s)", tries, tries == 1 ? "try" : "tries", what);
}

/* Find or prepare the statement for sql. */
static MYSQL_STMT *
db_prepare(struct db *db, const char *sql, unsigned int *errnum)
{
	MYSQL_STMT	*st;
	int		 i;

	*errnum = 0;
	for (i = 0; i < db->nstmts; i++) {
		if (strcmp(db->stmts[i].sql, sql) == 0)
			return (db->stmts[i].stmt);
	}
	if ((st = mysql_stmt_init(db->my)) == NULL) {
		*errnum = mysql_errno(db->my);
		db_set_error(db, "stmt_init", mysql_error(db->my));
		return (NULL);
	}
	if (mysql_stmt_prepare(st, sql, strlen(sql)) != 0) {
		*errnum = mysql_stmt_errno(st);
		db_set_error(db, "prepare", mysql_stmt_error(st));
		mysql_stmt_close(st);
		return (NULL);
	}
	if (db->nstmts == DB_MAX_STMTS)
		return (st);	/* uncached: the caller closes it */
	if ((db->stmts[db->nstmts].sql = strdup(sql)) == NULL) {
		mysql_stmt_close(st);
		return (NULL);
	}
	db->stmts[db->nstmts++].stmt = st;
	return (st);
}

/* Return 1 if st is in the cache. */
static int
db_cached(const struct db *db, const MYSQL_STMT *st)
{
	int	i;

	for (i = 0; i < db->nstmts; i++) {
		if (db->stmts[i].stmt == st)
			return (1);
	}
	return (0);
}

/* Fetch every row of an executed statement into a new db_res. */
static struct db_res *
db_fetch(struct db *db, MYSQL_STMT *st)
{
	MYSQL_RES	*meta;
	MYSQL_FIELD	*fields;
	MYSQL_BIND	*binds = NULL;
	struct db_res	*res = NULL;
	my_bool		 update = 1, *isnull = NULL;
	unsigned long	*lens = NULL;
	char		**bufs = NULL, **cells;
	size_t		 ncols, i, r;
	int		 rc;

	if ((meta = mysql_stmt_result_metadata(st)) == NULL) {
		db_set_error(db, "metadata", mysql_stmt_error(st));
		return (NULL);
	}
	ncols = mysql_num_fields(meta);
	fields = mysql_fetch_fields(meta);
	if (mysql_stmt_attr_set(st, STMT_ATTR_UPDATE_MAX_LENGTH, &update) ||
	    mysql_stmt_store_result(st) != 0) {
		db_set_error(db, "store_result", mysql_stmt_error(st));
		goto out;
	}
	binds = calloc(ncols, sizeof *binds);
	bufs = calloc(ncols, sizeof *bufs);
	lens = calloc(ncols, sizeof *lens);
	isnull = calloc(ncols, sizeof *isnull);
	res = calloc(1, sizeof *res);
	if (binds == NULL || bufs == NULL || lens == NULL || isnull == NULL ||
	    res == NULL)
		goto nomem;
	for (i = 0; i < ncols; i++) {
		size_t	cap = fields[i].max_length + 1;

		if (cap < 64)
			cap = 64;
		if ((bufs[i] = malloc(cap)) == NULL)
			goto nomem;
		binds[i].buffer_type = MYSQL_TYPE_STRING;
		binds[i].buffer = bufs[i];
		binds[i].buffer_length = cap;
		binds[i].length = &lens[i];
		binds[i].is_null = &isnull[i];
	}
	if (mysql_stmt_bind_result(st, binds) != 0) {
		db_set_error(db, "bind_result", mysql_stmt_error(st));
		goto fail;
	}
	res->ncols = ncols;
	res->nrows = (size_t)mysql_stmt_num_rows(st);
	res->cells = calloc(res->nrows * ncols + 1, sizeof *res->cells);
	res->lens = calloc(res->nrows * ncols + 1, sizeof *res->lens);
	if (res->cells == NULL || res->lens == NULL)
		goto nomem;
	for (r = 0; r < res->nrows; r++) {
		rc = mysql_stmt_fetch(st);
		if (rc == MYSQL_NO_DATA)
			break;
		if (rc != 0 && rc != MYSQL_DATA_TRUNCATED) {
			db_set_error(db, "fetch", mysql_stmt_error(st));
			goto fail;
		}
		cells = &res->cells[r * ncols];
		for (i = 0; i < ncols; i++) {
			if (isnull[i])
				continue;
			if ((cells[i] = malloc(lens[i] + 1)) == NULL)
				goto nomem;
			memcpy(cells[i], bufs[i], lens[i]);
			cells[i][lens[i]] = '\0';
			res->lens[r * ncols + i] = lens[i];
		}
	}
	goto out;
nomem:
	db_set_error(db, "fetch", "out of memory");
fail:
	db_res_free(res);
	res = NULL;
out:
	if (mysql_stmt_free_result(st) != 0)
		log_debug("mysql_stmt_free_result failed");
	for (i = 0; bufs != NULL && i < ncols; i++)
		free(bufs[i]);
	free(bufs);
	free(binds);
	free(lens);
	free(isnull);
	mysql_free_result(meta);
	return (res);
}

/* Run sql once with the bound parameters. */
static int
db_run_once(struct db *db, struct db_res **res, uint64_t *affected,
    const char *sql, MYSQL_BIND *binds, unsigned int *errnum)
{
	MYSQL_STMT	*st;
	int		 rc = -1;

	*errnum = 0;
	if (db_connect(db, NULL) != 0) {
		*errnum = CR_CONNECTION_ERROR;
		return (-1);
	}
	if ((st = db_prepare(db, sql, errnum)) == NULL)
		return (-1);
	if (mysql_stmt_param_count(st) > 0 &&
	    mysql_stmt_bind_param(st, binds) != 0) {
		*errnum = mysql_stmt_errno(st);
		db_set_error(db, "bind_param", mysql_stmt_error(st));
		goto out;
	}
	if (mysql_stmt_execute(st) != 0) {
		*errnum = mysql_stmt_errno(st);
		db_set_error(db, "execute", mysql_stmt_error(st));
		goto out;
	}
	if (res != NULL) {
		if ((*res = db_fetch(db, st)) == NULL)
			goto out;
	} else if (mysql_stmt_field_count(st) > 0) {
		if (mysql_stmt_free_result(st) != 0)
			log_debug("mysql_stmt_free_result failed");
	}
	if (affected != NULL)
		*affected = (uint64_t)mysql_stmt_affected_rows(st);
	rc = 0;
out:
	if (!db_cached(db, st))
		mysql_stmt_close(st);
	return (rc);
}

/*
 * Run a statement.  res (may be NULL) receives the rows; affected (may be
 * NULL) the affected row count.  Returns 0, or -1 (db_error says why).
 */
int
db_run(struct db *db, struct db_res **res, uint64_t *affected, const char *sql,
    const char *types, ...)
{
	MYSQL_BIND	 binds[DB_MAX_PARAMS];
	long long	 ints[DB_MAX_PARAMS];
	double		 dbls[DB_MAX_PARAMS];
	unsigned long	 lens[DB_MAX_PARAMS];
	const char	*s;
	unsigned int	 errnum;
	va_list		 ap;
	size_t		 i, n = strlen(types);
	int		 rc, tries, lost;

	if (res != NULL)
		*res = NULL;
	if (db == NULL)
		return (-1);	/* db_thread() logged why */
	if (n > DB_MAX_PARAMS)
		fatalx("db_run: too many parameters");
	memset(binds, 0, sizeof binds);
	va_start(ap, types);
	for (i = 0; i < n; i++) {
		switch (types[i]) {
		case 's':
			s = va_arg(ap, const char *);
			if (s == NULL) {
				binds[i].buffer_type = MYSQL_TYPE_NULL;
				break;
			}
			lens[i] = strlen(s);
			binds[i].buffer_type = MYSQL_TYPE_STRING;
			binds[i].buffer = (void *)(uintptr_t)s;
			binds[i].buffer_length = lens[i];
			binds[i].length = &lens[i];
			break;
		case 'b':
			binds[i].buffer = (void *)(uintptr_t)va_arg(ap,
			    const void *);
			lens[i] = (unsigned long)va_arg(ap, size_t);
			binds[i].buffer_type = MYSQL_TYPE_BLOB;
			binds[i].buffer_length = lens[i];
			binds[i].length = &lens[i];
			break;
		case 'i':
			ints[i] = va_arg(ap, long long);
			binds[i].buffer_type = MYSQL_TYPE_LONGLONG;
			binds[i].buffer = &ints[i];
			break;
		case 'd':
			dbls[i] = va_arg(ap, double);
			binds[i].buffer_type = MYSQL_TYPE_DOUBLE;
			binds[i].buffer = &dbls[i];
			break;
		default:
			fatalx("db_run: bad type %c", types[i]);
		}
	}
	va_end(ap);

	/*
	 * Outside a transaction: a statement the server rolled back (a
	 * deadlock, a lock wait, a Galera conflict) is tried again up to
	 * DB_TRIES times; a lost connection or a Galera node that is not
	 * ready, once, connected again (to another host if need be).
	 */
	rc = db_run_once(db, res, affected, sql, binds, &errnum);
	for (tries = 1, lost = 0; rc != 0 && !db->in_tx && tries < DB_TRIES;
	    tries++) {
		if (db_gone(errnum) || errnum == DB_WSREP_NOT_READY) {
			if (lost++)
				break;
			log_info("database connection lost (%s): "
			    "reconnecting", db->err);
			db_disconnect(db);
		} else if (errnum == 1213 || errnum == 1205)
			db_pause(tries);
		else
			break;
		rc = db_run_once(db, res, affected, sql, binds, &errnum);
	}
	db->errnum = rc != 0 ? errnum : 0;
	db->tries = tries;
	if (rc != 0) {
		if (db_gone(errnum) || errnum == DB_WSREP_NOT_READY)
			db_disconnect(db);
		db_set_why(db, tries);
		log_warnx("database: %s", db->err);
	}
	return (rc);
}

/*
 * Run fn(db, arg) in a transaction, committed if fn returns 0, rolled
 * back if it returns more (that value is returned: a refusal, not an
 * error).  A transaction the server rolled back (a deadlock, a Galera
 * certification conflict, a lock wait timeout, a node not ready, a
 * connection lost before COMMIT; or fn returned DB_TX_AGAIN) is run again,
 * up to DB_TRIES times with growing, jittered pauses; never after a COMMIT
 * whose answer was lost (it may have been applied).  Returns 0, fn's
 * refusal, or -1 (db_why says what happened).
 */
int
db_tx(struct db *db, int (*fn)(struct db *, void *), void *arg)
{
	int	tries, rc, again;

	if (db == NULL)
		return (-1);
	db->why[0] = '\0';
	for (tries = 1;; tries++) {
		db->tries = tries;
		if (db_begin(db) != 0) {
			again = db_gone(db->errnum) || db_retryable(db);
			db_disconnect(db);
		} else if ((rc = fn(db, arg)) == 0) {
			if (db_commit(db) == 0)
				return (0);
			/* A lost COMMIT may have been applied. */
			again = db_retryable(db);
			(void)db_rollback(db);
		} else if (rc > 0) {
			if (db_rollback(db) != 0)
				return (-1);
			return (rc);
		} else {
			again = rc == DB_TX_AGAIN || db_retryable(db) ||
			    db_gone(db->errnum);
			(void)db_rollback(db);
			if (db_gone(db->errnum))
				db_disconnect(db);
		}
		if (!again || tries == DB_TRIES)
			break;
		log_info("database: a transaction is tried again (error %u: "
		    "%s)", db->errnum, db->err);
		db_pause(tries);
	}
	db_set_why(db, tries);
	if (tries > 1)
		log_warnx("database: %s (%s)", db->why, db->err);
	return (-1);
}

/*
 * What the last failure was, in words a client may read (no host, no
 * statement): "the database refused the write after 8 tries (deadlock)".
 */
const char *
db_why(struct db *db)
{
	if (db == NULL)
		return ("no database connection came free");
	if (db->why[0] == '\0')
		return ("the database failed");
	return (db->why);
}

/*
 * Whether the last statement failed in a way that rolled its transaction
 * back on the server and may simply be tried again: a deadlock (and a
 * Galera certification conflict, which reports one), a lock wait timeout,
 * a Galera node not ready.  Never a lost connection: a COMMIT whose answer
 * was lost may have been applied.
 */
int
db_retryable(struct db *db)
{
	return (db != NULL && (db->errnum == 1213 || db->errnum == 1205 ||
	    db->errnum == DB_WSREP_NOT_READY));
}

/* Run a script of several statements (migrations). */
int
db_exec_multi(struct db *db, const char *sql, char **cause)
{
	MYSQL_RES	*r;
	int		 st;

	if (db_connect(db, cause) != 0)
		return (-1);
	if (mysql_set_server_option(db->my, MYSQL_OPTION_MULTI_STATEMENTS_ON)) {
		*cause = strdup(mysql_error(db->my));
		return (-1);
	}
	if (mysql_real_query(db->my, sql, strlen(sql)) != 0)
		goto fail;
	do {
		if ((r = mysql_store_result(db->my)) != NULL)
			mysql_free_result(r);
		else if (mysql_field_count(db->my) != 0)
			goto fail;
		if ((st = mysql_next_result(db->my)) > 0)
			goto fail;
	} while (st == 0);
	if (mysql_set_server_option(db->my, MYSQL_OPTION_MULTI_STATEMENTS_OFF))
		log_warnx("multi statements off: %s", mysql_error(db->my));
	return (0);
fail:
	*cause = strdup(mysql_error(db->my));
	db_disconnect(db);
	return (-1);
}

/* Run a statement without parameters or results. */
static int
db_simple(struct db *db, const char *sql)
{
	if (db == NULL)
		return (-1);
	if (db_connect(db, NULL) != 0) {
		db->errnum = CR_CONNECTION_ERROR;
		return (-1);
	}
	db->errnum = 0;
	if (mysql_query(db->my, sql) != 0) {
		db->errnum = mysql_errno(db->my);
		db_set_error(db, sql, mysql_error(db->my));
		log_warnx("database: %s", db->err);
		if (db_gone(mysql_errno(db->my)))
			db_disconnect(db);
		return (-1);
	}
	return (0);
}

/* Begin a transaction. */
int
db_begin(struct db *db)
{
	if (db_simple(db, "START TRANSACTION") != 0)
		return (-1);
	db->in_tx = 1;
	return (0);
}

/* Commit. */
int
db_commit(struct db *db)
{
	if (db == NULL)
		return (-1);
	db->in_tx = 0;
	return (db_simple(db, "COMMIT"));
}

/* Roll back; a connection lost meanwhile rolled back already. */
int
db_rollback(struct db *db)
{
	if (db == NULL)
		return (0);
	db->in_tx = 0;
	if (db->my == NULL)
		return (0);
	return (db_simple(db, "ROLLBACK"));
}

/* Check that the server answers (readiness). */
int
db_ping(struct db *db)
{
	struct db_res	*res;
	int		 rc;

	rc = db_run(db, &res, NULL, "SELECT 1", "");
	db_res_free(res);
	return (rc);
}

/* Return cell (row, col), or NULL. */
const char *
db_cell(const struct db_res *res, size_t row, size_t col)
{
	if (res == NULL || row >= res->nrows || col >= res->ncols)
		return (NULL);
	return (res->cells[row * res->ncols + col]);
}

/* Free a result. */
void
db_res_free(struct db_res *res)
{
	size_t	i;

	if (res == NULL)
		return;
	for (i = 0; res->cells != NULL && i < res->nrows * res->ncols; i++)
		free(res->cells[i]);
	free(res->cells);
	free(res->lens);
	free(res);
}
