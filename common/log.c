/*
 * Logging to stderr (journald captures it under systemd): one line per
 * message, prefixed with the program name and a level.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const char	*log_name = "ccgate";
static int		 log_verbose;
static pthread_mutex_t	 log_lock = PTHREAD_MUTEX_INITIALIZER;

/* Set the program name and verbosity. */
void
log_init(const char *name, int verbose)
{
	log_name = name;
	log_verbose = verbose;
}

/* Change the verbosity (0 quiet, 1 info, 2 debug). */
void
log_setverbose(int verbose)
{
	log_verbose = verbose;
}

/* Return the verbosity. */
int
log_getverbose(void)
{
	return (log_verbose);
}

/* Write one line; errnum >= 0 appends strerror. */
static void
log_vwrite(const char *level, int errnum, const char *fmt, va_list ap)
{
	char	msg[2048];

	vsnprintf(msg, sizeof msg, fmt, ap);
	pthread_mutex_lock(&log_lock);
	if (errnum >= 0)
		fprintf(stderr, "%s: %s: %s: %s\n", log_name, level, msg,
		    strerror(errnum));
	else
		fprintf(stderr, "%s: %s: %s\n", log_name, level, msg);
	fflush(stderr);
	pthread_mutex_unlock(&log_lock);
}

/* Warn with strerror(errno) appended. */
void
log_warn(const char *fmt, ...)
{
	va_list	ap;
	int	saved = errno;

	va_start(ap, fmt);
	log_vwrite("warning", saved, fmt, ap);
	va_end(ap);
	errno = saved;
}

/* Warn without errno. */
void
log_warnx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite("warning", -1, fmt, ap);
	va_end(ap);
}

/* Informational message, shown at verbosity 1 and above. */
void
log_info(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < 1)
		return;
	va_start(ap, fmt);
	log_vwrite("info", -1, fmt, ap);
	va_end(ap);
}

/* Debug message, shown at verbosity 2 and above. */
void
log_debug(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < 2)
		return;
	va_start(ap, fmt);
	log_vwrite("debug", -1, fmt, ap);
	va_end(ap);
}

/* Log with errno and exit. */
void
fatal(const char *fmt, ...)
{
	va_list	ap;
	int	saved = errno;

	va_start(ap, fmt);
	log_vwrite("fatal", saved, fmt, ap);
	va_end(ap);
	exit(1);
}

/* Log and exit. */
void
fatalx(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite("fatal", -1, fmt, ap);
	va_end(ap);
	exit(1);
}
