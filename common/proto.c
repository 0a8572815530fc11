/*
 * Frame codec for the job protocol: encode an object into a length-prefixed
 * frame, and decode frames from a byte stream with a hard size limit that is
 * checked before any body byte is buffered.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"
#include "util.h"

/* Initialise a reader that accepts frames of at most max bytes. */
void
proto_reader_init(struct proto_reader *r, size_t max)
{
	memset(r, 0, sizeof *r);
	r->max = max < PROTO_MIN_MAX ? PROTO_MIN_MAX : max;
}

/* Free a reader's buffer. */
void
proto_reader_free(struct proto_reader *r)
{
	free(r->buf);
	r->buf = NULL;
	r->len = r->cap = 0;
}

/*
 * Append bytes read from the peer.  The buffer never grows past one
 * maximal frame plus its header; returns -1 if it would.
 */
int
proto_reader_feed(struct proto_reader *r, const void *data, size_t n)
{
	size_t	 want, limit = r->max + PROTO_HEADER_LEN;
	uint8_t	*nb;

	if (n > limit - r->len)
		return (-1);
	want = r->len + n;
	if (want > r->cap) {
		size_t	ncap = r->cap ? r->cap : 4096;

		while (ncap < want)
			ncap *= 2;
		if (ncap > limit)
			ncap = limit;
		if ((nb = realloc(r->buf, ncap)) == NULL)
			return (-1);
		r->buf = nb;
		r->cap = ncap;
	}
	memcpy(r->buf + r->len, data, n);
	r->len += n;
	return (0);
}

/*
 * Take the next complete frame.  Returns 1 with *out set, 0 if more bytes
 * are needed, -1 with *cause set if the stream is bad (the peer must then
 * be dropped: framing cannot be recovered).
 */
int
proto_reader_next(struct proto_reader *r, json_t **out, char **cause)
{
	uint32_t	flen;

	*out = NULL;
	if (r->len < PROTO_HEADER_LEN)
		return (0);
	flen = ((uint32_t)r->buf[0] << 24) | ((uint32_t)r->buf[1] << 16) |
	    ((uint32_t)r->buf[2] << 8) | (uint32_t)r->buf[3];
	if (flen == 0 || flen > r->max) {
		util_cause(cause, "frame length %u outside 1..%zu", flen,
		    r->max);
		return (-1);
	}
	if (r->len - PROTO_HEADER_LEN < flen)
		return (0);
	*out = proto_decode(r->buf + PROTO_HEADER_LEN, flen, cause);
	memmove(r->buf, r->buf + PROTO_HEADER_LEN + flen,
	    r->len - PROTO_HEADER_LEN - flen);
	r->len -= PROTO_HEADER_LEN + flen;
	return (*out == NULL ? -1 : 1);
}

/*
 * Decode one frame body: a JSON object with "v" == PROTO_VERSION and a
 * string "type".  Returns a new reference or NULL with *cause set.
 */
json_t *
proto_decode(const void *body, size_t len, char **cause)
{
	json_error_t	 err;
	json_t		*obj, *v;

	obj = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
	if (obj == NULL) {
		util_cause(cause, "invalid JSON: %s", err.text);
		return (NULL);
	}
	if (!json_is_object(obj)) {
		util_cause(cause, "frame is not a JSON object");
		goto fail;
	}
	v = json_object_get(obj, "v");
	if (!json_is_integer(v) || json_integer_value(v) != PROTO_VERSION) {
		util_cause(cause, "unsupported protocol version");
		goto fail;
	}
	if (proto_type(obj) == NULL) {
		util_cause(cause, "frame has no type");
		goto fail;
	}
	return (obj);
fail:
	json_decref(obj);
	return (NULL);
}

/*
 * Encode obj into a newly allocated frame (*out, *outlen).  Fails if the
 * body would exceed max.
 */
int
proto_encode(const json_t *obj, size_t max, uint8_t **out, size_t *outlen,
    char **cause)
{
	char	*body;
	size_t	 len;
	uint8_t	*frame;

	*out = NULL;
	body = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (body == NULL) {
		util_cause(cause, "cannot encode frame");
		return (-1);
	}
	len = strlen(body);
	if (len > max) {
		util_cause(cause, "frame of %zu bytes exceeds %zu", len, max);
		free(body);
		return (-1);
	}
	if ((frame = malloc(len + PROTO_HEADER_LEN)) == NULL) {
		util_cause(cause, "out of memory");
		free(body);
		return (-1);
	}
	frame[0] = (uint8_t)(len >> 24);
	frame[1] = (uint8_t)(len >> 16);
	frame[2] = (uint8_t)(len >> 8);
	frame[3] = (uint8_t)len;
	memcpy(frame + PROTO_HEADER_LEN, body, len);
	free(body);
	*out = frame;
	*outlen = len + PROTO_HEADER_LEN;
	return (0);
}

/* Return a new message of the given type with "v" set. */
json_t *
proto_new(const char *type)
{
	json_t	*obj;

	obj = json_pack("{s:i, s:s}", "v", PROTO_VERSION, "type", type);
	return (obj);
}

/* Return the message's type, or NULL. */
const char *
proto_type(const json_t *obj)
{
	return (json_string_value(json_object_get(obj, "type")));
}

/* Write one frame to a blocking descriptor. */
int
proto_write_fd(int fd, const json_t *obj, size_t max, char **cause)
{
	uint8_t	*frame;
	size_t	 len;
	int	 rc;

	if (proto_encode(obj, max, &frame, &len, cause) != 0)
		return (-1);
	if ((rc = util_write_all(fd, frame, len)) != 0)
		util_cause(cause, "write: %s", strerror(errno));
	free(frame);
	return (rc);
}

/* Read exactly len bytes, waiting at most until deadline (ms, -1 forever). */
static int
proto_read_full(int fd, void *buf, size_t len, int timeout_ms, char **cause)
{
	struct pollfd	pfd = { .fd = fd, .events = POLLIN };
	size_t		off = 0;
	ssize_t		n;
	int		r;

	while (off < len) {
		r = poll(&pfd, 1, timeout_ms);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			util_cause(cause, "poll: %s", strerror(errno));
			return (-1);
		}
		if (r == 0) {
			util_cause(cause, "timed out");
			return (-2);
		}
		n = read(fd, (uint8_t *)buf + off, len - off);
		if (n == -1 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n == -1) {
			util_cause(cause, "read: %s", strerror(errno));
			return (-1);
		}
		if (n == 0) {
			util_cause(cause, "connection closed");
			return (-1);
		}
		off += (size_t)n;
	}
	return (0);
}

/*
 * Read one frame from a blocking descriptor, waiting at most timeout_ms
 * between reads (-1 forever).  Returns NULL with *cause set on error.
 */
json_t *
proto_read_fd(int fd, size_t max, int timeout_ms, char **cause)
{
	uint8_t	 hdr[PROTO_HEADER_LEN], *body;
	uint32_t flen;
	json_t	*obj;

	if (proto_read_full(fd, hdr, sizeof hdr, timeout_ms, cause) != 0)
		return (NULL);
	flen = ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) |
	    ((uint32_t)hdr[2] << 8) | (uint32_t)hdr[3];
	if (flen == 0 || flen > max) {
		util_cause(cause, "frame length %u outside 1..%zu", flen, max);
		return (NULL);
	}
	if ((body = malloc(flen)) == NULL) {
		util_cause(cause, "out of memory");
		return (NULL);
	}
	if (proto_read_full(fd, body, flen, timeout_ms, cause) != 0) {
		free(body);
		return (NULL);
	}
	obj = proto_decode(body, flen, cause);
	free(body);
	return (obj);
}
