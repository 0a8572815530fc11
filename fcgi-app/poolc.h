/* Client of ccgate-poold's job protocol. */
#ifndef CCGATE_POOLC_H
#define CCGATE_POOLC_H

#include <jansson.h>

#define POOLC_ERROR	0
#define POOLC_TIMEOUT	1
#define POOLC_GONE	2

struct poolc;

struct poolc	*poolc_open(const char *, char **);
int		 poolc_send(struct poolc *, json_t *, char **);
json_t		*poolc_next(struct poolc *, int, int, int *, char **);
void		 poolc_close(struct poolc *);
json_t		*poolc_call(const char *, json_t *, int, char **);

#endif
