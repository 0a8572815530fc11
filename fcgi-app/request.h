/* The FastCGI side of a request: what fcgi.c and the tests need. */
#ifndef CCGATE_REQUEST_H
#define CCGATE_REQUEST_H

#include <stddef.h>

#include <fcgiapp.h>
#include <jansson.h>

struct request;

void	req_handle(FCGX_Request *);
int	req_fd(struct request *);
int	req_json_depth_ok(const char *, size_t, long);
struct request	*req_sub(struct request *, int);
json_t		*req_sub_take(struct request *, long long *, long long *,
		    double *);

#endif
