/*
 * Event loop: epoll for descriptors, signalfd for signals, and a periodic
 * tick for deadlines.  Callbacks may add and remove descriptors, including
 * their own; a removed loop_io is never called again in the same round.
 */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "util.h"

#define LOOP_MAX_EVENTS	64

struct loop {
	int		 epfd;
	int		 running;
	int		 tick_ms;
	uint64_t	 last_tick;
	loop_tick_cb	 tick_cb;
	void		*tick_arg;
	struct loop_io	 sig_io;
	loop_signal_cb	 sig_cb;
	void		*sig_arg;
	/* Descriptors removed during the current round. */
	struct loop_io	*removed[LOOP_MAX_EVENTS];
	int		 nremoved;
	int		 overflow;
};

/* Create a loop that calls tick_cb at least every tick_ms. */
struct loop *
loop_create(int tick_ms, loop_tick_cb tick_cb, void *arg)
{
	struct loop	*loop;

	if ((loop = calloc(1, sizeof *loop)) == NULL)
		return (NULL);
	if ((loop->epfd = epoll_create1(EPOLL_CLOEXEC)) == -1) {
		free(loop);
		return (NULL);
	}
	loop->tick_ms = tick_ms;
	loop->tick_cb = tick_cb;
	loop->tick_arg = arg;
	loop->sig_io.fd = -1;
	loop->last_tick = util_now_ms();
	return (loop);
}

/* Free a loop; descriptors it watched are not closed. */
void
loop_free(struct loop *loop)
{
	if (loop == NULL)
		return;
	if (loop->sig_io.fd != -1)
		close(loop->sig_io.fd);
	close(loop->epfd);
	free(loop);
}

/* Read pending signals from the signalfd and hand each to the callback. */
static void
loop_signal_read_cb(struct loop_io *io, uint32_t events)
{
	struct loop			*loop = io->arg;
	struct signalfd_siginfo		 si;
	ssize_t				 n;

	for (;;) {
		n = read(io->fd, &si, sizeof si);
		if (n == -1 && errno == EINTR)
			continue;
		if (n != (ssize_t)sizeof si)
			break;
		loop->sig_cb((int)si.ssi_signo, loop->sig_arg);
	}
}

/*
 * Block the given signals and deliver them as loop events.  Children must
 * unblock them after fork.
 */
int
loop_signals(struct loop *loop, const int *sigs, int nsigs, loop_signal_cb cb,
    void *arg)
{
	sigset_t	set;
	int		i, fd;

	sigemptyset(&set);
	for (i = 0; i < nsigs; i++)
		sigaddset(&set, sigs[i]);
	if (sigprocmask(SIG_BLOCK, &set, NULL) == -1)
		return (-1);
	fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (fd == -1)
		return (-1);
	loop->sig_cb = cb;
	loop->sig_arg = arg;
	if (loop_add(loop, &loop->sig_io, fd, EPOLLIN, loop_signal_read_cb,
	    loop) == -1) {
		close(fd);
		return (-1);
	}
	return (0);
}

/* Start watching fd for events through io. */
int
loop_add(struct loop *loop, struct loop_io *io, int fd, uint32_t events,
    loop_io_cb cb, void *arg)
{
	struct epoll_event	ev = { .events = events, .data.ptr = io };

	io->fd = fd;
	io->events = events;
	io->cb = cb;
	io->arg = arg;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) == -1)
		return (-1);
	io->active = 1;
	return (0);
}

/* Change the events watched on io. */
int
loop_mod(struct loop *loop, struct loop_io *io, uint32_t events)
{
	struct epoll_event	ev = { .events = events, .data.ptr = io };

	if (!io->active)
		return (-1);
	if (io->events == events)
		return (0);
	if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) == -1)
		return (-1);
	io->events = events;
	return (0);
}

/* Stop watching io; it is not called again, even later in this round. */
void
loop_del(struct loop *loop, struct loop_io *io)
{
	if (!io->active)
		return;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, NULL) == -1)
		log_warn("epoll_ctl del fd %d", io->fd);
	io->active = 0;
	if (loop->nremoved < LOOP_MAX_EVENTS)
		loop->removed[loop->nremoved++] = io;
	else
		loop->overflow = 1;
}

/* Change the tick interval. */
void
loop_set_tick(struct loop *loop, int tick_ms)
{
	loop->tick_ms = tick_ms;
}

/* Return 1 if io was removed earlier in this round. */
static int
loop_was_removed(const struct loop *loop, const struct loop_io *io)
{
	int	i;

	for (i = 0; i < loop->nremoved; i++) {
		if (loop->removed[i] == io)
			return (1);
	}
	return (0);
}

/*
 * One round: wait for events, at most max_ms and no longer than until the
 * next tick, run their callbacks, then the tick if it is due.  The removed
 * list guards against a callback that frees another io whose event is
 * still pending in this round; an io freed and reallocated in the same
 * round is caught the same way because the owner always calls loop_del
 * before freeing.  If more were removed than the list holds, the rest of
 * the round is skipped: epoll is level triggered, so what was skipped is
 * reported again.
 */
int
loop_once(struct loop *loop, int max_ms)
{
	struct epoll_event	 evs[LOOP_MAX_EVENTS];
	struct loop_io		*io;
	uint64_t		 now;
	int			 n, i, wait;

	now = util_now_ms();
	wait = loop->tick_ms - (int)(now - loop->last_tick);
	if (wait < 0)
		wait = 0;
	if (max_ms >= 0 && wait > max_ms)
		wait = max_ms;
	n = epoll_wait(loop->epfd, evs, LOOP_MAX_EVENTS, wait);
	if (n == -1 && errno != EINTR)
		return (-1);
	loop->nremoved = 0;
	loop->overflow = 0;
	for (i = 0; i < n && !loop->overflow; i++) {
		io = evs[i].data.ptr;
		if (loop_was_removed(loop, io) || !io->active)
			continue;
		io->cb(io, evs[i].events);
	}
	loop->nremoved = 0;
	now = util_now_ms();
	if (now - loop->last_tick >= (uint64_t)loop->tick_ms) {
		loop->last_tick = now;
		if (loop->tick_cb != NULL)
			loop->tick_cb(loop->tick_arg);
	}
	return (0);
}

/* Run rounds until loop_stop. */
int
loop_run(struct loop *loop)
{
	loop->running = 1;
	loop->last_tick = util_now_ms();
	while (loop->running) {
		if (loop_once(loop, -1) != 0)
			return (-1);
	}
	return (0);
}

/* Make loop_run return after the current round. */
void
loop_stop(struct loop *loop)
{
	loop->running = 0;
}
