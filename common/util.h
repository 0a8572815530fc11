/* Small helpers shared by both programs. */
#ifndef CCGATE_UTIL_H
#define CCGATE_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define UUID_LEN	36
#define TENANT_MAX	64

uint64_t	util_now_ms(void);
uint64_t	util_now_us(void);
int		util_uuid4(char [UUID_LEN + 1]);
int		util_valid_uuid(const char *);
int		util_valid_tenant(const char *);
int		util_valid_word(const char *, size_t);
int		util_valid_tool_name(const char *);
/* A workspace file's path: relative, components of at most 255 bytes. */
#define FILE_PATH_MAX	1024
#define FILE_NAME_MAX	255
#define FILE_PATH_DEPTH	32	/* components a files API path may have */
const char	*util_file_path(const char *, size_t);
int		util_set_nonblock(int);
int		util_write_all(int, const void *, size_t);
/* The daemons' command line: [-nv] [-f config]. */
struct util_args {
	const char	*config;	/* -f, else the default given */
	int		 check;		/* -n: check the configuration, exit */
	int		 verbose;	/* the number of -v */
};

void		util_args(const char *, int, char **, const char *,
		    struct util_args *);
void		util_cause(char **, const char *, ...)
		    __attribute__((format(printf, 2, 3)));

#endif
