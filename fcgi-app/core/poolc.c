/*
 * Client side of the job protocol: one connection to ccgate-poold per job
 * or control message.  Closing the connection cancels the job.
 */
#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "core.h"
#include "proto.h"

#define POOLC_CHUNK	(64 * 1024)

struct poolc {
	int	fd;
};

/* Connect to the daemon; NULL with *cause set if it does not answer. */
struct poolc *
poolc_open(const char *path, char **cause)
{
	struct sockaddr_un	 sa;
	struct poolc		*pc;

	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sa.sun_path) {
		*cause = strdup("pool socket path too long");
		return (NULL);
	}
	strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
	if ((pc = calloc(1, sizeof *pc)) == NULL) {
		*cause = strdup("out of memory");
		return (NULL);
	}
	pc->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (pc->fd == -1 || connect(pc->fd, (struct sockaddr *)&sa,
	    sizeof sa) == -1) {
		util_cause(cause, "the pool daemon is not answering (%s)",
		    strerror(errno));
		if (pc->fd != -1)
			close(pc->fd);
		free(pc);
		return (NULL);
	}
	return (pc);
}

/*
 * Send one message.  Frames are bounded by ccgate-poold's max_frame, which
 * it checks both ways; this side allows the largest there is.
 */
int
poolc_send(struct poolc *pc, json_t *msg, char **cause)
{
	return (proto_write_fd(pc->fd, msg, PROTO_LARGEST, cause));
}

/*
 * Wait for the next frame for at most timeout_ms, also watching watch_fd
 * (the client's connection, -1 for none) for a hang-up.  Returns the frame,
 * or NULL with *why set: POOLC_TIMEOUT, POOLC_GONE (the client left) or
 * POOLC_ERROR (*cause says why).
 */
json_t *
poolc_next(struct poolc *pc, int watch_fd, int timeout_ms, int *why,
    char **cause)
{
	struct pollfd	pfd[2];
	int		n, nfds = 1;

	*why = POOLC_ERROR;
	pfd[0].fd = pc->fd;
	pfd[0].events = POLLIN;
	if (watch_fd != -1) {
		pfd[1].fd = watch_fd;
		pfd[1].events = POLLRDHUP;
		nfds = 2;
	}
	for (;;) {
		pfd[0].revents = pfd[1].revents = 0;
		n = poll(pfd, (nfds_t)nfds, timeout_ms);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			util_cause(cause, "poll: %s", strerror(errno));
			return (NULL);
		}
		break;
	}
	if (nfds == 2 && (pfd[1].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
		*why = POOLC_GONE;
		return (NULL);
	}
	if (n == 0) {
		*why = POOLC_TIMEOUT;
		return (NULL);
	}
	return (proto_read_fd(pc->fd, PROTO_LARGEST, 30000, cause));
}

/* Close the connection (cancelling a running job). */
void
poolc_close(struct poolc *pc)
{
	if (pc == NULL)
		return;
	close(pc->fd);
	free(pc);
}

/* Send one control message and return the answer (a new reference). */
json_t *
poolc_call(const char *path, json_t *msg, int timeout_ms, char **cause)
{
	struct poolc	*pc;
	json_t		*ans = NULL;

	if ((pc = poolc_open(path, cause)) == NULL)
		return (NULL);
	if (poolc_send(pc, msg, cause) == 0)
		ans = proto_read_fd(pc->fd, PROTO_LARGEST, timeout_ms,
		    cause);
	poolc_close(pc);
	return (ans);
}

/*
 * Send one control message and return the answer, with the descriptor it
 * carried (SCM_RIGHTS) in *fd, or -1 if none.  The answer is one frame of
 * at most PROTO_LARGEST bytes (ccgate-poold's max_frame bounds it); a
 * descriptor that came with anything else is closed.
 */
json_t *
poolc_call_fd(const char *path, json_t *msg, int timeout_ms, int *fd,
    char **cause)
{
	struct poolc	*pc;
	struct msghdr	 mh;
	struct iovec	 iov;
	struct cmsghdr	*cm;
	struct pollfd	 pfd;
	union {
		char		buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr	align;
	} u;
	uint8_t		*buf = NULL, *nb;
	size_t		 len = 0, cap = 0, want = PROTO_HEADER_LEN;
	json_t		*ans = NULL;
	ssize_t		 n;
	int		 got;

	*fd = -1;
	if ((pc = poolc_open(path, cause)) == NULL)
		return (NULL);
	if (poolc_send(pc, msg, cause) != 0)
		goto out;
	while (len < want) {
		if (want > cap) {
			if ((nb = realloc(buf, want)) == NULL) {
				util_cause(cause, "out of memory");
				goto out;
			}
			buf = nb;
			cap = want;
		}
		pfd.fd = pc->fd;
		pfd.events = POLLIN;
		if ((n = poll(&pfd, 1, timeout_ms)) == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			util_cause(cause, "the pool daemon did not answer");
			goto out;
		}
		memset(&mh, 0, sizeof mh);
		iov.iov_base = buf + len;
		iov.iov_len = want - len;
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof u.buf;
		n = recvmsg(pc->fd, &mh, MSG_CMSG_CLOEXEC);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			util_cause(cause, "the pool daemon closed the "
			    "connection");
			goto out;
		}
		for (cm = CMSG_FIRSTHDR(&mh); cm != NULL;
		    cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET ||
			    cm->cmsg_type != SCM_RIGHTS ||
			    cm->cmsg_len != CMSG_LEN(sizeof(int)))
				continue;
			memcpy(&got, CMSG_DATA(cm), sizeof got);
			if (*fd != -1)
				close(*fd);
			*fd = got;
		}
		len += (size_t)n;
		if (len == PROTO_HEADER_LEN && want == PROTO_HEADER_LEN) {
			want = ((size_t)buf[0] << 24 | (size_t)buf[1] << 16 |
			    (size_t)buf[2] << 8 | (size_t)buf[3]);
			if (want == 0 || want > PROTO_LARGEST) {
				util_cause(cause, "bad frame from the pool "
				    "daemon");
				goto out;
			}
			want += PROTO_HEADER_LEN;
		}
	}
	ans = proto_decode(buf + PROTO_HEADER_LEN, len - PROTO_HEADER_LEN,
	    cause);
out:
	free(buf);
	poolc_close(pc);
	if (ans == NULL && *fd != -1) {
		close(*fd);
		*fd = -1;
	}
	return (ans);
}

/*
 * SHA-256 of the size bytes fd holds, as hex into hex; -1 if it cannot be
 * read or is not size bytes long now.  Never more than size is read: a CLI
 * may grow the file (a sparse 200 GB) between the listing and this.
 */
static int
poolc_hash_fd(int fd, char hex[65], long long size)
{
	crypto_hash_sha256_state	 st;
	unsigned char			 d[crypto_hash_sha256_BYTES];
	struct stat			 sb;
	char				*buf;
	ssize_t				 n;
	long long			 left = size;

	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) ||
	    (long long)sb.st_size != size)
		return (-1);
	if ((buf = malloc(POOLC_CHUNK)) == NULL)
		return (-1);
	crypto_hash_sha256_init(&st);
	while (left > 0) {
		n = read(fd, buf, left < POOLC_CHUNK ? (size_t)left :
		    POOLC_CHUNK);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		crypto_hash_sha256_update(&st, (unsigned char *)buf,
		    (size_t)n);
		left -= n;
	}
	free(buf);
	if (left != 0)
		return (-1);	/* an error, or shorter than listed */
	crypto_hash_sha256_final(&st, d);
	sodium_bin2hex(hex, 65, d, sizeof d);
	return (0);
}

/*
 * The SHA-256 of tenant's workspace file path (of size bytes, as listed)
 * as a JSON string, read through a descriptor ccgate-poold opens; JSON
 * null if it cannot be had or *budget (bytes still to hash) is smaller.
 */
json_t *
poolc_file_sha256(const char *sock, const char *tenant, const char *path,
    long long size, long long *budget)
{
	json_t	*m, *ans;
	char	 hex[65], *cause = NULL;
	int	 fd = -1, rc;

	if (size < 0 || size > *budget || (m = json_pack("{s:i, s:s, s:s, s:s, s:s}", "v",
	    PROTO_VERSION, "type", PROTO_FILE_OPEN, "tenant", tenant, "path",
	    path, "mode", "read")) == NULL)
		return (json_null());
	ans = poolc_call_fd(sock, m, 30000, &fd, &cause);
	json_decref(m);
	free(cause);
	if (ans == NULL || strcmp(proto_type(ans), PROTO_OK) != 0 ||
	    fd == -1) {
		json_decref(ans);
		if (fd != -1)
			close(fd);
		return (json_null());
	}
	json_decref(ans);
	*budget -= size;
	rc = poolc_hash_fd(fd, hex, size);
	close(fd);
	return (rc == 0 ? json_string(hex) : json_null());
}
