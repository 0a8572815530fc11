/*
 * A small single-threaded event loop over epoll.  Each watched descriptor
 * has a struct loop_io owned by the caller; signals arrive through a
 * signalfd as ordinary events; one timer callback runs at least every
 * tick_ms so owners can check their own deadlines.
 */
#ifndef CCGATE_LOOP_H
#define CCGATE_LOOP_H

#include <stdint.h>
#include <sys/epoll.h>

struct loop;
struct loop_io;

typedef void (*loop_io_cb)(struct loop_io *, uint32_t);
typedef void (*loop_tick_cb)(void *);
typedef void (*loop_signal_cb)(int, void *);

struct loop_io {
	int		 fd;
	uint32_t	 events;
	loop_io_cb	 cb;
	void		*arg;
	int		 active;
};

struct loop	*loop_create(int, loop_tick_cb, void *);
void		 loop_free(struct loop *);
int		 loop_signals(struct loop *, const int *, int, loop_signal_cb,
		     void *);
int		 loop_add(struct loop *, struct loop_io *, int, uint32_t,
		     loop_io_cb, void *);
int		 loop_mod(struct loop *, struct loop_io *, uint32_t);
void		 loop_del(struct loop *, struct loop_io *);
void		 loop_set_tick(struct loop *, int);
int		 loop_once(struct loop *, int);
int		 loop_run(struct loop *);
void		 loop_stop(struct loop *);

#endif
