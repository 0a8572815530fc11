/*
 * One claude CLI process.  It is spawned without a shell, in its own
 * process group (in its sandbox), with an environment built from scratch,
 * and is complete only once both EOF on its stdout and its exit status
 * have been seen.  It reports to its owner (pool.c) through the callbacks
 * it was spawned with.
 */
#include "config.h"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "log.h"
#include "poold.h"

#define PROC_READ	65536

static void	proc_out_cb(struct loop_io *, uint32_t);
static void	proc_err_cb(struct loop_io *, uint32_t);
static void	proc_in_cb(struct loop_io *, uint32_t);
static void	proc_check_done(struct proc *);

/* Append a formatted string; on failure the vector is marked failed. */
void
strv_add(struct strv *sv, const char *fmt, ...)
{
	va_list	  ap;
	char	**nv, *s;
	size_t	  ncap;
	int	  r;

	if (sv->failed)
		return;
	if (sv->n + 2 > sv->cap) {
		ncap = sv->cap ? sv->cap * 2 : 64;
		if ((nv = reallocarray(sv->v, ncap, sizeof *nv)) == NULL) {
			sv->failed = 1;
			return;
		}
		sv->v = nv;
		sv->cap = ncap;
	}
	va_start(ap, fmt);
	r = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (r == -1) {
		sv->failed = 1;
		return;
	}
	sv->v[sv->n++] = s;
	sv->v[sv->n] = NULL;
}

/* Free a vector's strings and itself. */
void
strv_free(struct strv *sv)
{
	size_t	i;

	for (i = 0; i < sv->n; i++)
		free(sv->v[i]);
	free(sv->v);
	memset(sv, 0, sizeof *sv);
}

/*
 * Build the argv of a CLI for profile pr: the sandbox around it (if any),
 * then the CLI.  session is the session to start (--session-id) or, with
 * resume set, to continue (--resume).  Values are passed as --flag=value
 * so that one starting with '-' is never taken for a flag.
 */
static int
proc_argv(struct strv *sv, const struct profile *pr, const char *home,
    const char *workspace, const char *session, int resume)
{
	struct poold_config	*cf = poold->cf;
	int			 prompt = pr->system_prompt != NULL;

	if (cf->sandbox == SANDBOX_BWRAP)
		sandbox_args(sv, home, workspace, prompt);
	strv_add(sv, "%s", cf->cli_real);
	strv_add(sv, "-p");
	strv_add(sv, "--input-format=stream-json");
	strv_add(sv, "--output-format=stream-json");
	strv_add(sv, "--verbose");
	strv_add(sv, "--include-partial-messages");
	strv_add(sv, "--setting-sources=user");
	strv_add(sv, "--strict-mcp-config");
	sandbox_cli_args(sv, pr->tools);
	if (pr->model[0] != '\0')
		strv_add(sv, "--model=%s", pr->model);
	/*
	 * The client's tools: an MCP server of the "sdk" kind, which the
	 * CLI speaks to over its own stdin and stdout (pool_mcp plays it),
	 * allowed without a prompt.  The tools themselves are never on argv.
	 */
	if (pr->client_tools != NULL) {
		strv_add(sv, "--mcp-config={\"mcpServers\":{\"ccgate\":"
		    "{\"type\":\"sdk\",\"name\":\"ccgate\"}}}");
		strv_add(sv, "--allowedTools=mcp__ccgate");
		if (!pr->tools)
			strv_add(sv, "--permission-mode=dontAsk");
	}
	/* A file, not argv: a prompt may be larger than argv allows. */
	if (prompt && cf->sandbox == SANDBOX_BWRAP)
		strv_add(sv, "--system-prompt-file=%s", SANDBOX_PROMPT);
	else if (prompt)
		strv_add(sv, "--system-prompt-file=/proc/self/fd/%d",
		    SANDBOX_PROMPT_FD);
	if (resume)
		strv_add(sv, "--resume=%s", session);
	else
		strv_add(sv, "--session-id=%s", session);
	return (sv->failed ? -1 : 0);
}

/*
 * Build the environment of a CLI from scratch: home is its HOME as it
 * sees it, egress its token ("" for none).
 */
static int
proc_envp(struct strv *sv, const struct profile *pr, const char *home,
    const char *egress)
{
	struct poold_config	*cf = poold->cf;
	const char		*sock;
	int			 i, box = cf->sandbox == SANDBOX_BWRAP;

	strv_add(sv, "PATH=%s", cf->cli_env_path);
	strv_add(sv, "HOME=%s", home);
	strv_add(sv, "CLAUDE_CONFIG_DIR=%s/.claude", home);
	strv_add(sv, "LANG=C.UTF-8");
	strv_add(sv, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1");
	if (pr->client_tools != NULL) {
		/*
		 * The client's tools as it named them (no mcp__ccgate__) when
		 * the CLI has none of its own they could be taken for, all
		 * offered at once (no tool search deferring them).
		 */
		if (!pr->tools)
			strv_add(sv, "CLAUDE_AGENT_SDK_MCP_NO_PREFIX=1");
		strv_add(sv, "ENABLE_TOOL_SEARCH=false");
	}
	strv_add(sv, "DISABLE_AUTOUPDATER=1");
	strv_add(sv, "DISABLE_TELEMETRY=1");
	if (box)
		strv_add(sv, "TMPDIR=/tmp");
	if (pr->tools)
		strv_add(sv, "SHELL=/bin/bash");
	if (pr->max_tokens > 0)
		strv_add(sv, "CLAUDE_CODE_MAX_OUTPUT_TOKENS=%ld",
		    pr->max_tokens);
	if (cf->egress_socket != NULL) {
		sock = strrchr(cf->egress_socket, '/') + 1;
		if (box)
			strv_add(sv, "ANTHROPIC_UNIX_SOCKET=%s/%s",
			    SANDBOX_EGRESS_DIR, sock);
		else
			strv_add(sv, "ANTHROPIC_UNIX_SOCKET=%s",
			    cf->egress_socket);
		strv_add(sv, "ANTHROPIC_BASE_URL=http://ccgate-egress");
		strv_add(sv, "%s=ccgate-egress-%s", cf->egress_oauth ?
		    "CLAUDE_CODE_OAUTH_TOKEN" : "ANTHROPIC_API_KEY", egress);
	}
	/*
	 * The CLI's own retries of a failing upstream (429, 529, 401, 5xx)
	 * before it reports the turn failed: few, since ccgate-poold keeps
	 * the account's state; env.CLAUDE_CODE_MAX_RETRIES wins.
	 */
	for (i = 0; i < cf->nenv; i++)
		if (strncmp(cf->env[i], "CLAUDE_CODE_MAX_RETRIES=", 24) == 0)
			break;
	if (i == cf->nenv && cf->cli_max_retries >= 0)
		strv_add(sv, "CLAUDE_CODE_MAX_RETRIES=%ld",
		    cf->cli_max_retries);
	for (i = 0; i < cf->nenv; i++)
		strv_add(sv, "%s", cf->env[i]);
	return (sv->failed ? -1 : 0);
}

/*
 * In the child: become a process group, die with the daemon, set up the
 * descriptors (the system prompt on SANDBOX_PROMPT_FD), limits and user,
 * and exec.  Never returns.  It runs in the daemon's memory (vfork), so
 * it only makes system calls and writes its own stack: no allocation, no
 * stdio, nothing the daemon would see.
 */
static void __attribute__((noreturn))
proc_child(pid_t parent, int in, int out, int err, int prompt, int nice,
    const char *cwd, char **argv, char **envp)
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
	if (prompt != -1) {
		if (prompt != SANDBOX_PROMPT_FD &&
		    dup2(prompt, SANDBOX_PROMPT_FD) == -1)
			_exit(127);
		if (fcntl(SANDBOX_PROMPT_FD, F_SETFD, 0) == -1)
			_exit(127);
	}
	if (close_range(prompt != -1 ? SANDBOX_PROMPT_FD + 1 : 3, ~0U, 0) ==
	    -1)
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
	/*
	 * The daemons that relay its output go first when CPU is short, and
	 * a starting CLI after the turns that run (proc_renice).
	 */
	if (setpriority(PRIO_PROCESS, 0, nice) == -1)
		_exit(127);
	/* In the sandbox, setpriv becomes the user once bwrap has mounted. */
	if (cf->run_as_user != NULL && cf->sandbox != SANDBOX_BWRAP) {
		if (setgroups(0, NULL) == -1 || setgid(cf->run_gid) == -1 ||
		    setuid(cf->run_uid) == -1)
			_exit(127);
	}
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1)
		_exit(127);
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
proc_vfork(pid_t parent, int in, int out, int err, int prompt, int nice,
    const char *cwd, char **argv, char **envp)
{
	pid_t	pid = vfork();

	if (pid == 0)
		proc_child(parent, in, out, err, prompt, nice, cwd, argv,
		    envp);
	return (pid);
}

/*
 * A sealed memory file holding the system prompt s: the CLI reads it as
 * a file (--system-prompt-file), so its size is not bounded by argv.
 */
static int
proc_prompt_fd(const char *s, char **cause)
{
	int	fd;

	fd = memfd_create("ccgate-system-prompt", MFD_CLOEXEC |
	    MFD_ALLOW_SEALING);
	if (fd == -1) {
		util_cause(cause, "memfd_create: %s", strerror(errno));
		return (-1);
	}
	if (util_write_all(fd, s, strlen(s)) != 0 ||
	    lseek(fd, 0, SEEK_SET) == -1 || fcntl(fd, F_ADD_SEALS,
	    F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) == -1) {
		util_cause(cause, "system prompt: %s", strerror(errno));
		close(fd);
		return (-1);
	}
	return (fd);
}

/* Write the SDK's initialize request with pr's output schema. */
static int
proc_initialize(struct proc *p, const struct profile *pr)
{
	char	*line;
	int	 n, rc;

	n = asprintf(&line, "{\"type\":\"control_request\",\"request_id\":"
	    "\"ccgate-init\",\"request\":{\"subtype\":\"initialize\","
	    "\"jsonSchema\":%s}}\n", pr->output_schema);
	if (n == -1)
		return (-1);
	rc = proc_write(p, line, (size_t)n);
	free(line);
	return (rc);
}

/*
 * Spawn a CLI for profile pr.  With tenant NULL the process is warm: it
 * gets a slot whose HOME becomes its conversation's when it is bound.
 * Otherwise it is tenant's, for conversation conv, started with session
 * (resumed if resume is set).  Each line it writes goes to line_cb, and
 * gone_cb is called once it has exited and its output ended (as tmux's
 * job_run reports to its owner).
 */
struct proc *
proc_spawn(const struct profile *pr, const char *tenant, const char *conv,
    const char *session, int resume, proc_line_cb line_cb,
    proc_gone_cb gone_cb, char **cause)
{
	struct poold_config	*cf = poold->cf;
	struct proc		*p = NULL;
	struct strv		 argv = { 0 }, envp = { 0 };
	char			 home[PATH_MAX], workspace[PATH_MAX];
	char			 cwd[PATH_MAX];
	char			 sid[UUID_LEN + 1];
	int			 in[2] = { -1, -1 }, out[2] = { -1, -1 };
	int			 err[2] = { -1, -1 }, prompt = -1;
	sigset_t		 all, old;
	pid_t			 pid, parent = getpid();
	int			 box = cf->sandbox == SANDBOX_BWRAP;

	if (pr->tools && (!box || cf->egress_socket == NULL)) {
		util_cause(cause, "tools need the sandbox and the egress "
		    "(sandbox = bwrap, egress_socket)");
		poold->stats.spawn_failed++;
		return (NULL);
	}
	if ((p = calloc(1, sizeof *p)) == NULL) {
		util_cause(cause, "out of memory");
		return (NULL);
	}
	p->in_fd = p->out_fd = p->err_fd = -1;
	p->slot = -1;
	p->line_cb = line_cb;
	p->gone_cb = gone_cb;
	if (profile_copy(&p->profile, pr) != 0) {
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

	if (tenant == NULL) {
		p->slot = poold->next_slot++;
		if (workspace_slot_create(cf->state_dir, p->slot, cause) != 0)
			goto fail;
		snprintf(home, sizeof home, "%s/slots/%d", cf->state_dir,
		    p->slot);
	} else {
		if (workspace_home(cf->state_dir, tenant, conv, home,
		    sizeof home, cause) != 0)
			goto fail;
		snprintf(p->tenant, sizeof p->tenant, "%s", tenant);
		snprintf(p->conversation, sizeof p->conversation, "%s", conv);
	}
	snprintf(workspace, sizeof workspace, "%s/tenants/%s/workspace",
	    cf->state_dir, tenant != NULL ? tenant : "");
	snprintf(cwd, sizeof cwd, "%s", box ? "/" : poold->neutral_dir);
	if (cf->egress_socket != NULL && egress_issue(cf->state_dir, tenant,
	    p->egress, cause) != 0)
		goto fail;
	if (pr->system_prompt != NULL &&
	    (prompt = proc_prompt_fd(pr->system_prompt, cause)) == -1)
		goto fail;
	if (proc_argv(&argv, &p->profile, home, pr->tools ? workspace : NULL,
	    session, resume) != 0 || proc_envp(&envp, &p->profile, box ?
	    SANDBOX_HOME : home, p->egress) != 0) {
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
	p->niced = cf->spawn_nice > cf->cli_nice;
	pid = proc_vfork(parent, in[0], out[1], err[1], prompt, (int)(p->niced ?
	    cf->spawn_nice : cf->cli_nice), cwd, argv.v, envp.v);
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
	if (prompt != -1)
		close(prompt);
	p->pid = pid;
	p->cli_pid = box ? 0 : pid;
	p->in_fd = in[1];
	p->out_fd = out[0];
	p->err_fd = err[0];
	p->started_at = p->last_used_at = poold_now();
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
	/*
	 * Structured output: the schema goes in the SDK's initialize request
	 * on stdin, before any turn (on argv every local user could read
	 * it).  Its answer is a control_response, which the parser passes.
	 */
	if (pr->output_schema != NULL && proc_initialize(p, pr) != 0) {
		log_warnx("cannot hand CLI %ld its output schema", (long)pid);
		proc_kill(p);
	}
	strv_free(&argv);
	strv_free(&envp);
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
	if (prompt != -1)
		close(prompt);
	strv_free(&argv);
	strv_free(&envp);
	egress_revoke(cf->state_dir, p->egress);
	if (p->slot != -1)
		workspace_slot_remove(cf->state_dir, p->slot);
	profile_clear(&p->profile);
	free(p);
	poold->stats.spawn_failed++;
	return (NULL);
}

/* The first pid in /proc/PID/task/PID/children, or 0. */
static pid_t
proc_first_child(pid_t pid)
{
	char	path[64];
	FILE	*f;
	long	child = 0;

	snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", (long)pid,
	    (long)pid);
	if ((f = fopen(path, "re")) == NULL)
		return (0);
	if (fscanf(f, "%ld", &child) != 1)
		child = 0;
	fclose(f);
	return ((pid_t)child);
}

/*
 * The CLI's own pid (as the host sees it): in the sandbox it is the child
 * of bwrap's init, itself the child of the bwrap the daemon started.  0
 * while it is not there yet: while bwrap sets the sandbox up, its init's
 * child is bwrap's own helper, and then setpriv, before the CLI.
 */
pid_t
proc_cli_pid(struct proc *p)
{
	struct poold_config	*cf = poold->cf;
	char			 path[64], exe[PATH_MAX];
	ssize_t			 n;
	pid_t			 init, child;

	if (p->cli_pid != 0 || p->reaped ||
	    (init = proc_first_child(p->pid)) == 0 ||
	    (child = proc_first_child(init)) == 0)
		return (p->cli_pid);
	snprintf(path, sizeof path, "/proc/%ld/exe", (long)child);
	if ((n = readlink(path, exe, sizeof exe - 1)) <= 0)
		return (0);
	exe[n] = '\0';
	if (strcmp(exe, cf->sandbox_bwrap) != 0 &&
	    strcmp(exe, cf->sandbox_setpriv) != 0)
		p->cli_pid = child;
	return (p->cli_pid);
}

/*
 * Say how a process ended: bwrap passes the CLI's exit code on, and 128
 * plus the signal's number for a CLI killed by a signal.
 */
void
proc_exit_text(const struct proc *p, char *buf, size_t len)
{
	int	code;

	if (WIFSIGNALED(p->status))
		snprintf(buf, len, "killed by signal %d", WTERMSIG(p->status));
	else if (WIFEXITED(p->status)) {
		code = WEXITSTATUS(p->status);
		if (poold->cf->sandbox == SANDBOX_BWRAP && code > 128 &&
		    code < 128 + NSIG)
			snprintf(buf, len, "killed by signal %d", code - 128);
		else
			snprintf(buf, len, "exit code %d", code);
	} else
		snprintf(buf, len, "status %d", p->status);
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
	/* A CLI that does not read its stdin gets no more than this. */
	if (p->inlen - p->inoff + len > 2 * (size_t)poold->cf->max_frame)
		return (-1);
	if ((nb = realloc(p->inbuf, p->inlen + len)) == NULL)
		return (-1);
	p->inbuf = nb;
	memcpy(p->inbuf + p->inlen, data, len);
	p->inlen += len;
	return (proc_flush(p));
}

/* Split what was read from stdout into lines and hand each to the owner. */
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
			p->line_cb(p, p->line, p->linelen);
		p->linelen = 0;
		/* The owner may have killed the process on that line. */
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
	p->kill_at = poold_now() + POOLD_STOP_GRACE_MS;
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
		p->gone_cb(p);
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
	egress_revoke(poold->cf->state_dir, p->egress);
	free(p->inbuf);
	free(p->line);
	profile_clear(&p->profile);
	json_decref(p->waiting);
	json_decref(p->held);
	json_decref(p->asked);
	free(p);
}

/* The most tasks of one CLI's tree proc_tree visits. */
#define PROC_TREE_MAX	512

/*
 * Every task (thread) of pid's process tree, from /proc/PID/task/TID/
 * children: cb(tid, is the process's own, arg) for each, at most
 * PROC_TREE_MAX.  Returns how many were visited.
 */
static int
proc_tree(pid_t pid, void (*cb)(pid_t, int, void *), void *arg)
{
	pid_t		 todo[64], kid;
	char		 path[64], buf[1024], *s, *end;
	DIR		*d;
	struct dirent	*de;
	FILE		*f;
	size_t		 n;
	int		 ntodo = 0, visited = 0;
	long		 tid;

	todo[ntodo++] = pid;
	while (ntodo > 0 && visited < PROC_TREE_MAX) {
		pid = todo[--ntodo];
		snprintf(path, sizeof path, "/proc/%ld/task", (long)pid);
		if ((d = opendir(path)) == NULL)
			continue;
		while ((de = readdir(d)) != NULL && visited < PROC_TREE_MAX) {
			tid = strtol(de->d_name, &end, 10);
			if (*de->d_name == '\0' || *end != '\0' || tid <= 0)
				continue;
			cb((pid_t)tid, tid == (long)pid, arg);
			visited++;
			snprintf(path, sizeof path, "/proc/%ld/task/%ld/children",
			    (long)pid, tid);
			if ((f = fopen(path, "re")) == NULL)
				continue;
			n = fread(buf, 1, sizeof buf - 1, f);
			fclose(f);
			buf[n] = '\0';
			for (s = buf; ntodo < (int)(sizeof todo / sizeof *todo);
			    s = end) {
				kid = (pid_t)strtol(s, &end, 10);
				if (end == s || kid <= 0)
					break;
				todo[ntodo++] = kid;
			}
		}
		closedir(d);
	}
	return (visited);
}

/* Add a process's resident set to the sum. */
static void
proc_tree_rss_cb(pid_t tid, int own, void *arg)
{
	long	kb;

	if (own && (kb = proc_rss_kb(tid)) > 0)
		*(long *)arg += kb;
}

/* The resident set of pid and its descendants in KiB, or -1. */
long
proc_tree_rss_kb(pid_t pid)
{
	long	sum = 0;

	if (proc_tree(pid, proc_tree_rss_cb, &sum) == 0)
		return (-1);
	return (sum);
}

/* Set one task's nice; a failure is counted. */
static void
proc_renice_cb(pid_t tid, int own, void *arg)
{
	int	*a = arg;

	if (setpriority(PRIO_PROCESS, (id_t)tid, a[0]) == -1 && errno != ESRCH)
		a[1]++;
}

/*
 * Give every task of p's tree the nice a running turn has: it was started
 * at spawn_nice.  Raising priority needs CAP_SYS_NICE (the daemon as
 * root); without it the process stays where it was.  Returns 0, or -1 if
 * some task could not be changed.
 */
int
proc_renice(struct proc *p, int nice)
{
	int	a[2] = { nice, 0 };

	if (!p->niced)
		return (0);
	p->niced = 0;
	(void)proc_tree(p->pid, proc_renice_cb, a);
	if (a[1] > 0) {
		log_debug("CLI %ld: %d of its tasks keep spawn_nice: %s",
		    (long)p->pid, a[1], strerror(errno));
		return (-1);
	}
	return (0);
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
