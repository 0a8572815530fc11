/*
 * One claude CLI process.  It is spawned without a shell, in its own
 * process group, with an environment built from scratch, and is complete
 * only once both EOF on its stdout and its exit status have been seen.
 */
#include "config.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "log.h"
#include "poold.h"

#define PROC_MAX_ARGS	32
#define PROC_READ	65536

static void	proc_out_cb(struct loop_io *, uint32_t);
static void	proc_err_cb(struct loop_io *, uint32_t);
static void	proc_in_cb(struct loop_io *, uint32_t);
static void	proc_check_done(struct proc *);

/* Free a NULL-terminated array of strings. */
static void
proc_free_strv(char **v)
{
	char	**s;

	if (v == NULL)
		return;
	for (s = v; *s != NULL; s++)
		free(*s);
	free(v);
}

/* Append a formatted string to a NULL-terminated array with room. */
static int __attribute__((format(printf, 3, 4)))
proc_push(char **v, int *n, const char *fmt, ...)
{
	va_list	ap;
	int	r;

	va_start(ap, fmt);
	r = vasprintf(&v[*n], fmt, ap);
	va_end(ap);
	if (r == -1) {
		v[*n] = NULL;
		return (-1);
	}
	v[++(*n)] = NULL;
	return (0);
}

/*
 * Build the argv of a CLI for profile pr.  session is the session to start
 * (--session-id) or, with resume set, to continue (--resume).  Values are
 * passed as --flag=value so that one starting with '-' is never taken for
 * a flag.
 */
static char **
proc_argv(const struct profile *pr, const char *session, int resume)
{
	char	**v;
	int	  n = 0, bad = 0;

	if ((v = calloc(PROC_MAX_ARGS + 1, sizeof *v)) == NULL)
		return (NULL);
	bad |= proc_push(v, &n, "%s", poold->cf->cli_path);
	bad |= proc_push(v, &n, "-p");
	bad |= proc_push(v, &n, "--input-format=stream-json");
	bad |= proc_push(v, &n, "--output-format=stream-json");
	bad |= proc_push(v, &n, "--verbose");
	bad |= proc_push(v, &n, "--include-partial-messages");
	bad |= proc_push(v, &n, "--setting-sources=user");
	bad |= proc_push(v, &n, "--strict-mcp-config");
	if (!pr->tools)
		bad |= proc_push(v, &n, "--tools=");
	if (pr->model[0] != '\0')
		bad |= proc_push(v, &n, "--model=%s", pr->model);
	if (pr->system_prompt != NULL)
		bad |= proc_push(v, &n, "--system-prompt=%s",
		    pr->system_prompt);
	if (resume)
		bad |= proc_push(v, &n, "--resume=%s", session);
	else
		bad |= proc_push(v, &n, "--session-id=%s", session);
	if (bad) {
		proc_free_strv(v);
		return (NULL);
	}
	return (v);
}

/* Build the environment of a CLI whose HOME is home. */
static char **
proc_envp(const struct profile *pr, const char *home, const char *tmpdir)
{
	struct poold_config	*cf = poold->cf;
	char			**v;
	int			  n = 0, i, bad = 0;

	if ((v = calloc(POOLD_ENV_MAX + 16, sizeof *v)) == NULL)
		return (NULL);
	bad |= proc_push(v, &n, "PATH=%s", cf->cli_env_path);
	bad |= proc_push(v, &n, "HOME=%s", home);
	bad |= proc_push(v, &n, "CLAUDE_CONFIG_DIR=%s/.claude", home);
	bad |= proc_push(v, &n, "LANG=C.UTF-8");
	bad |= proc_push(v, &n, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1");
	bad |= proc_push(v, &n, "DISABLE_AUTOUPDATER=1");
	bad |= proc_push(v, &n, "DISABLE_TELEMETRY=1");
	if (tmpdir != NULL)
		bad |= proc_push(v, &n, "TMPDIR=%s", tmpdir);
	if (pr->max_tokens > 0)
		bad |= proc_push(v, &n, "CLAUDE_CODE_MAX_OUTPUT_TOKENS=%ld",
		    pr->max_tokens);
	for (i = 0; i < cf->nenv; i++)
		bad |= proc_push(v, &n, "%s", cf->env[i]);
	if (bad) {
		proc_free_strv(v);
		return (NULL);
	}
	return (v);
}

/*
 * In the child: become a process group, die with the daemon, set up the
 * descriptors, limits and user, and exec.  Never returns.  It runs in the
 * daemon's memory (vfork), so it only makes system calls and writes its
 * own stack: no allocation, no stdio, nothing the daemon would see.
 */
static void __attribute__((noreturn))
proc_child(pid_t parent, int in, int out, int err, const char *cwd,
    char **argv, char **envp)
{
	struct poold_config	*cf = poold->cf;
	struct rlimit		 rl;
	sigset_t		 none;
	int			 sig;

	for (sig = 1; sig < NSIG; sig++)
		(void)signal(sig, SIG_DFL);
	if (setpgid(0, 0) == -1)
		_exit(127);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent)
		_exit(127);
	if (dup2(in, STDIN_FILENO) == -1 || dup2(out, STDOUT_FILENO) == -1 ||
	    dup2(err, STDERR_FILENO) == -1)
		_exit(127);
	if (close_range(3, ~0U, 0) == -1)
		_exit(127);
	if (chdir(cwd) == -1)
		_exit(127);
	rl.rlim_cur = rl.rlim_max = 0;
	if (setrlimit(RLIMIT_CORE, &rl) == -1)
		_exit(127);
	rl.rlim_cur = rl.rlim_max = (rlim_t)cf->rlimit_nofile;
	if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
		_exit(127);
	if (cf->rlimit_nproc > 0) {
		rl.rlim_cur = rl.rlim_max = (rlim_t)cf->rlimit_nproc;
		if (setrlimit(RLIMIT_NPROC, &rl) == -1)
			_exit(127);
	}
	/* The daemons that relay its output go first when CPU is short. */
	if (setpriority(PRIO_PROCESS, 0, (int)cf->cli_nice) == -1)
		_exit(127);
	if (cf->run_as_user != NULL) {
		if (setgroups(0, NULL) == -1 || setgid(cf->run_gid) == -1 ||
		    setuid(cf->run_uid) == -1)
			_exit(127);
	}
	sigemptyset(&none);
	if (sigprocmask(SIG_SETMASK, &none, NULL) == -1)
		_exit(127);
	execve(argv[0], argv, envp);
	_exit(127);
}

/*
 * Start the child with vfork(2): the daemon waits only until it has exec'd
 * (or failed), and no page tables are copied, so a spawn holds up the
 * other jobs' events for less.  Signals are blocked by the caller.
 */
static pid_t
proc_vfork(pid_t parent, int in, int out, int err, const char *cwd,
    char **argv, char **envp)
{
	pid_t	pid = vfork();

	if (pid == 0)
		proc_child(parent, in, out, err, cwd, argv, envp);
	return (pid);
}

/*
 * Spawn a CLI for profile pr.  With tenant NULL the process is warm: it
 * gets a slot whose HOME is retargeted when it is bound.  Otherwise it is
 * the tenant's, started with session (resumed if resume is set).
 */
struct proc *
proc_spawn(const struct profile *pr, const char *tenant, const char *session,
    int resume, char **cause)
{
	struct poold_config	*cf = poold->cf;
	struct proc		*p = NULL;
	char			**argv = NULL, **envp = NULL;
	char			 home[PATH_MAX], tmpdir[PATH_MAX], cwd[PATH_MAX];
	char			 sid[UUID_LEN + 1];
	int			 in[2] = { -1, -1 }, out[2] = { -1, -1 };
	int			 err[2] = { -1, -1 };
	sigset_t		 all, old;
	pid_t			 pid, parent = getpid();

	if ((p = calloc(1, sizeof *p)) == NULL) {
		util_cause(cause, "out of memory");
		return (NULL);
	}
	p->in_fd = p->out_fd = p->err_fd = -1;
	p->slot = -1;
	p->profile = *pr;
	p->profile.system_prompt = NULL;
	if (pr->system_prompt != NULL &&
	    (p->profile.system_prompt = strdup(pr->system_prompt)) == NULL) {
		util_cause(cause, "out of memory");
		goto fail;
	}
	if (session == NULL) {
		if (util_uuid4(sid) != 0) {
			util_cause(cause, "getrandom failed");
			goto fail;
		}
		session = sid;
	}
	snprintf(p->session_id, sizeof p->session_id, "%s", session);
	p->resumed = resume;

	snprintf(cwd, sizeof cwd, "%s", poold->neutral_dir);
	if (tenant == NULL) {
		p->slot = poold->next_slot++;
		if (workspace_slot_create(cf->state_dir, p->slot, cause) != 0)
			goto fail;
		snprintf(home, sizeof home, "%s/slots/%d", cf->state_dir,
		    p->slot);
	} else {
		if (workspace_tenant(cf->state_dir, tenant, cause) != 0)
			goto fail;
		snprintf(p->tenant, sizeof p->tenant, "%s", tenant);
		snprintf(home, sizeof home, "%s/tenants/%s/home", cf->state_dir,
		    tenant);
		if (pr->tools)
			snprintf(cwd, sizeof cwd, "%s/tenants/%s/workspace",
			    cf->state_dir, tenant);
	}
	snprintf(tmpdir, sizeof tmpdir, "%s/tenants/%s/workspace/temp",
	    cf->state_dir, tenant != NULL ? tenant : "");
	argv = proc_argv(&p->profile, session, resume);
	envp = proc_envp(&p->profile, home, tenant != NULL ? tmpdir : NULL);
	if (argv == NULL || envp == NULL) {
		util_cause(cause, "out of memory");
		goto fail;
	}
	if (pipe2(in, O_CLOEXEC) == -1 || pipe2(out, O_CLOEXEC) == -1 ||
	    pipe2(err, O_CLOEXEC) == -1) {
		util_cause(cause, "pipe: %s", strerror(errno));
		goto fail;
	}

	sigfillset(&all);
	if (sigprocmask(SIG_SETMASK, &all, &old) == -1) {
		util_cause(cause, "sigprocmask: %s", strerror(errno));
		goto fail;
	}
	pid = proc_vfork(parent, in[0], out[1], err[1], cwd, argv, envp);
	if (sigprocmask(SIG_SETMASK, &old, NULL) == -1)
		log_warn("sigprocmask");
	if (pid == -1) {
		util_cause(cause, "vfork: %s", strerror(errno));
		goto fail;
	}
	/* Also set in the parent, so kill(-pid) works before the child runs. */
	if (setpgid(pid, pid) == -1 && errno != EACCES && errno != ESRCH)
		log_warn("setpgid %ld", (long)pid);

	close(in[0]);
	close(out[1]);
	close(err[1]);
	in[0] = out[1] = err[1] = -1;
	p->pid = pid;
	p->in_fd = in[1];
	p->out_fd = out[0];
	p->err_fd = err[0];
	p->started_at = p->last_used_at = util_now_ms();
	p->state = PROC_WARM;
	if (util_set_nonblock(p->in_fd) == -1 ||
	    util_set_nonblock(p->out_fd) == -1 ||
	    util_set_nonblock(p->err_fd) == -1 ||
	    loop_add(poold->loop, &p->out_io, p->out_fd, EPOLLIN, proc_out_cb,
	    p) == -1 ||
	    loop_add(poold->loop, &p->err_io, p->err_fd, EPOLLIN, proc_err_cb,
	    p) == -1) {
		/* The child exists: let the normal reaping path take it. */
		log_warn("cannot watch CLI %ld", (long)pid);
		proc_kill(p);
	}
	p->in_io.fd = p->in_fd;
	proc_free_strv(argv);
	proc_free_strv(envp);
	TAILQ_INSERT_TAIL(&poold->procs, p, entry);
	poold->nprocs++;
	poold->stats.spawned++;
	log_debug("spawned CLI %ld (%s, session %s%s)", (long)pid,
	    tenant != NULL ? tenant : "warm", session, resume ? ", resume" :
	    "");
	return (p);

fail:
	if (in[0] != -1) { close(in[0]); close(in[1]); }
	if (out[0] != -1) { close(out[0]); close(out[1]); }
	if (err[0] != -1) { close(err[0]); close(err[1]); }
	proc_free_strv(argv);
	proc_free_strv(envp);
	if (p->slot != -1)
		workspace_slot_remove(cf->state_dir, p->slot);
	free(p->profile.system_prompt);
	free(p);
	poold->stats.spawn_failed++;
	return (NULL);
}

/* Try to write pending stdin bytes; watch for EPOLLOUT while any remain. */
static int
proc_flush(struct proc *p)
{
	ssize_t	n;

	while (p->inoff < p->inlen) {
		n = write(p->in_fd, p->inbuf + p->inoff, p->inlen - p->inoff);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			break;
		if (n == -1)
			return (-1);
		p->inoff += (size_t)n;
	}
	if (p->inoff == p->inlen) {
		free(p->inbuf);
		p->inbuf = NULL;
		p->inlen = p->inoff = 0;
		if (p->in_io.active)
			loop_del(poold->loop, &p->in_io);
		return (0);
	}
	if (!p->in_io.active && loop_add(poold->loop, &p->in_io, p->in_fd,
	    EPOLLOUT, proc_in_cb, p) == -1)
		return (-1);
	return (0);
}

/* stdin is writable again. */
static void
proc_in_cb(struct loop_io *io, uint32_t events)
{
	struct proc	*p = io->arg;

	if (proc_flush(p) != 0) {
		log_warn("write to CLI %ld", (long)p->pid);
		proc_kill(p);
	}
}

/* Queue bytes for the CLI's stdin. */
int
proc_write(struct proc *p, const char *data, size_t len)
{
	char	*nb;

	if (p->in_fd == -1 || p->state == PROC_DYING)
		return (-1);
	if ((nb = realloc(p->inbuf, p->inlen + len)) == NULL)
		return (-1);
	p->inbuf = nb;
	memcpy(p->inbuf + p->inlen, data, len);
	p->inlen += len;
	return (proc_flush(p));
}

/* Split what was read from stdout into lines and hand each to the pool. */
static int
proc_take_lines(struct proc *p, const char *buf, size_t n)
{
	const char	*nl;
	size_t		 chunk;
	char		*nb;

	while (n > 0) {
		nl = memchr(buf, '\n', n);
		chunk = nl != NULL ? (size_t)(nl - buf) : n;
		if (p->linelen + chunk > CLI_MAX_LINE)
			return (-1);
		if (p->linelen + chunk + 1 > p->linecap) {
			size_t	ncap = p->linecap ? p->linecap : 4096;

			while (ncap < p->linelen + chunk + 1)
				ncap *= 2;
			if ((nb = realloc(p->line, ncap)) == NULL)
				return (-1);
			p->line = nb;
			p->linecap = ncap;
		}
		memcpy(p->line + p->linelen, buf, chunk);
		p->linelen += chunk;
		p->line[p->linelen] = '\0';
		if (nl == NULL)
			break;
		buf += chunk + 1;
		n -= chunk + 1;
		if (p->linelen > 0)
			pool_proc_line(p, p->line, p->linelen);
		p->linelen = 0;
		/* The pool may have killed the process on that line. */
		if (p->state == PROC_DYING)
			return (0);
	}
	return (0);
}

/* Close and stop watching one of the process's descriptors. */
static void
proc_close_fd(struct proc *p, struct loop_io *io, int *fd)
{
	if (*fd == -1)
		return;
	if (io->active)
		loop_del(poold->loop, io);
	close(*fd);
	*fd = -1;
}

/* stdout is readable. */
static void
proc_out_cb(struct loop_io *io, uint32_t events)
{
	struct proc	*p = io->arg;
	char		 buf[PROC_READ];
	ssize_t		 n;

	n = read(p->out_fd, buf, sizeof buf);
	if (n == -1 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n > 0) {
		p->read_us = util_now_us();
		if (proc_take_lines(p, buf, (size_t)n) != 0) {
			log_warnx("CLI %ld: output line too long",
			    (long)p->pid);
			proc_kill(p);
		}
		return;
	}
	proc_close_fd(p, &p->out_io, &p->out_fd);
	p->eof = 1;
	proc_check_done(p);
}

/* stderr is readable: keep its tail for error messages. */
static void
proc_err_cb(struct loop_io *io, uint32_t events)
{
	struct proc	*p = io->arg;
	char		 buf[PROC_READ];
	ssize_t		 n;
	size_t		 keep;

	n = read(p->err_fd, buf, sizeof buf);
	if (n == -1 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		proc_close_fd(p, &p->err_io, &p->err_fd);
		return;
	}
	if ((size_t)n >= sizeof p->errtail - 1) {
		memcpy(p->errtail, buf + n - (sizeof p->errtail - 1),
		    sizeof p->errtail - 1);
		p->errlen = sizeof p->errtail - 1;
	} else {
		keep = sizeof p->errtail - 1 - (size_t)n;
		if (p->errlen > keep) {
			memmove(p->errtail, p->errtail + p->errlen - keep, keep);
			p->errlen = keep;
		}
		memcpy(p->errtail + p->errlen, buf, (size_t)n);
		p->errlen += (size_t)n;
	}
	p->errtail[p->errlen] = '\0';
}

/* Kill the process group now; it is freed once reaped and at EOF. */
void
proc_kill(struct proc *p)
{
	if (p->state == PROC_DYING && p->kill_at == 0)
		return;
	p->state = PROC_DYING;
	p->kill_at = 0;
	if (!p->reaped && kill(-p->pid, SIGKILL) == -1 && errno != ESRCH)
		log_warn("kill %ld", (long)p->pid);
	proc_close_fd(p, &p->in_io, &p->in_fd);
}

/*
 * Stop an idle process gracefully: close its stdin so the CLI finishes
 * writing its transcript and exits by itself (it writes the transcript
 * just after each turn, so SIGKILL would lose context); proc_tick kills
 * it if it is still there after POOLD_STOP_GRACE_MS.
 */
void
proc_stop(struct proc *p)
{
	if (p->state == PROC_DYING)
		return;
	p->state = PROC_DYING;
	p->kill_at = util_now_ms() + POOLD_STOP_GRACE_MS;
	proc_close_fd(p, &p->in_io, &p->in_fd);
}

/* Kill stopping processes whose grace period is over. */
void
proc_tick(uint64_t now)
{
	struct proc	*p;

	TAILQ_FOREACH(p, &poold->procs, entry) {
		if (p->state == PROC_DYING && p->kill_at != 0 &&
		    now >= p->kill_at && !p->reaped) {
			log_warnx("CLI %ld ignored end of input: killing",
			    (long)p->pid);
			p->kill_at = 0;
			if (kill(-p->pid, SIGKILL) == -1 && errno != ESRCH)
				log_warn("kill %ld", (long)p->pid);
		}
	}
}

/* A process is done once it has exited and its stdout reached EOF. */
static void
proc_check_done(struct proc *p)
{
	if (p->eof && p->reaped)
		pool_proc_gone(p);
}

/*
 * Reap every exited child.  waitid with WNOWAIT first, so that the group
 * can still be killed by its id (grandchildren holding the pipes die with
 * it) before the id is released.
 */
void
proc_reap(void)
{
	struct proc	*p;
	siginfo_t	 si;
	int		 status;
	pid_t		 pid;

	for (;;) {
		memset(&si, 0, sizeof si);
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == -1 ||
		    si.si_pid == 0)
			break;
		pid = si.si_pid;
		if (kill(-pid, SIGKILL) == -1 && errno != ESRCH)
			log_warn("kill group %ld", (long)pid);
		if (waitpid(pid, &status, 0) == -1) {
			log_warn("waitpid %ld", (long)pid);
			continue;
		}
		poold->stats.exited++;
		TAILQ_FOREACH(p, &poold->procs, entry) {
			if (p->pid == pid)
				break;
		}
		if (p == NULL)
			continue;
		p->reaped = 1;
		p->status = status;
		p->crashed = p->state != PROC_DYING;
		if (p->state != PROC_DYING)
			log_info("CLI %ld exited (status %d)", (long)pid, status);
		proc_close_fd(p, &p->in_io, &p->in_fd);
		proc_check_done(p);
	}
}

/* Free a process that is gone: unlinked from the table by the caller. */
void
proc_free(struct proc *p)
{
	proc_close_fd(p, &p->in_io, &p->in_fd);
	proc_close_fd(p, &p->out_io, &p->out_fd);
	proc_close_fd(p, &p->err_io, &p->err_fd);
	if (p->slot != -1)
		workspace_slot_remove(poold->cf->state_dir, p->slot);
	free(p->inbuf);
	free(p->line);
	free(p->profile.system_prompt);
	free(p);
}

/* Resident set size of pid in KiB, or -1. */
long
proc_rss_kb(pid_t pid)
{
	char	path[64];
	FILE	*f;
	long	size, resident;

	snprintf(path, sizeof path, "/proc/%ld/statm", (long)pid);
	if ((f = fopen(path, "re")) == NULL)
		return (-1);
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		resident = -1;
	fclose(f);
	if (resident < 0)
		return (-1);
	return (resident * (sysconf(_SC_PAGESIZE) / 1024));
}

/*
 * The scheduler state of pid from /proc/PID/stat ('R', 'S', 'T', 'Z'...),
 * or 0 if it cannot be read (the process is gone).
 */
char
proc_sched_state(pid_t pid)
{
	char	 path[64], buf[512], *rp;
	FILE	*f;
	size_t	 n;

	snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
	if ((f = fopen(path, "re")) == NULL)
		return (0);
	n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: skip to the last. */
	if ((rp = strrchr(buf, ')')) == NULL || rp[1] != ' ')
		return (0);
	return (rp[2]);
}
