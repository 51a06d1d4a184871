/*
 * walcat.c: the companion tool.
 */
#include "autoconfig.h"

#include <stdio.h>
#include <string.h>

#include "fcw2.h"

int
main(int argc, char **argv)
{
	fprintf(stderr, "usage: walcat dump|verify PATH\n");
	return argc > 1 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
}
