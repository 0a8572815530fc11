/*
 * What the front ends share around their transport (front/front.c):
 * ccgate-fcgi (front/fcgi.c) and ccgate-ws (front/ws.c).  ccgate-admin
 * (front/admin.c) needs none of it.
 */
#ifndef CCGATE_FRONT_H
#define CCGATE_FRONT_H

#include <pthread.h>
#include <signal.h>

int		 front_start(const char *, int, char **, sigset_t *);
void		 front_socket_perms(const char *);
pthread_t	*front_threads(long, void *(*)(void *));
void		 front_wait_stop(sigset_t *);

#endif
