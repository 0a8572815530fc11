/*
 * Runs a fuzz target over files without libFuzzer, so every target is
 * also an ordinary check program: each argument is a file or a folder of
 * files (a seed corpus).  Prints how many inputs it ran.
 */
#include "config.h"

#include <sys/stat.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* Run one file through the target. */
static int
replay_file(const char *path)
{
	FILE	*f;
	uint8_t	*buf;
	long	 n;

	if ((f = fopen(path, "rb")) == NULL)
		return (-1);
	if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET) != 0 || (buf = malloc((size_t)n + 1)) == NULL) {
		fclose(f);
		return (-1);
	}
	if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		fclose(f);
		return (-1);
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	free(buf);
	return (0);
}

int
main(int argc, char **argv)
{
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	char		 path[4096];
	int		 i, n = 0;

	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &sb) != 0) {
			fprintf(stderr, "replay: %s: not found\n", argv[i]);
			return (1);
		}
		if (!S_ISDIR(sb.st_mode)) {
			if (replay_file(argv[i]) != 0)
				return (1);
			n++;
			continue;
		}
		if ((d = opendir(argv[i])) == NULL)
			return (1);
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof path, "%s/%s", argv[i], de->d_name);
			if (replay_file(path) != 0) {
				closedir(d);
				return (1);
			}
			n++;
		}
		closedir(d);
	}
	printf("replayed %d inputs\n", n);
	return (n > 0 ? 0 : 1);
}
