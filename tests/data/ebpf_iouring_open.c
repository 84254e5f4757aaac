/*
 * Test helper for the eBPF sensor: open a file through io_uring (IORING_OP_OPENAT) and read it,
 * with raw syscalls only (no liburing). Built by tests/sensors/ebpf_support.py with cc.
 *
 *   ebpf_iouring_open PATH           -> a normal fd (prints "fd N")
 *   ebpf_iouring_open PATH direct    -> a direct open into the ring's fixed-file table ("slot 0")
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ring_fd;
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;

static int setup(void)
{
	struct io_uring_params p;
	void *sq, *cq;

	memset(&p, 0, sizeof(p));
	ring_fd = syscall(__NR_io_uring_setup, 4, &p);
	if (ring_fd < 0)
		return -1;
	sq = mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQ_RING);
	cq = mmap(NULL, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_CQ_RING);
	sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
		return -1;
	sq_tail = (unsigned *)((char *)sq + p.sq_off.tail);
	sq_mask = (unsigned *)((char *)sq + p.sq_off.ring_mask);
	sq_array = (unsigned *)((char *)sq + p.sq_off.array);
	cq_head = (unsigned *)((char *)cq + p.cq_off.head);
	cq_tail = (unsigned *)((char *)cq + p.cq_off.tail);
	cq_mask = (unsigned *)((char *)cq + p.cq_off.ring_mask);
	cqes = (struct io_uring_cqe *)((char *)cq + p.cq_off.cqes);
	return 0;
}

/* Submit one openat and wait for its completion; returns cqe->res. */
static int submit_openat(const char *path, unsigned file_index)
{
	unsigned tail = *sq_tail, idx = tail & *sq_mask, head;
	struct io_uring_sqe *sqe = &sqes[idx];
	int res;

	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_OPENAT;
	sqe->fd = AT_FDCWD;
	sqe->addr = (unsigned long)path;
	sqe->open_flags = O_RDONLY;
	sqe->file_index = file_index;
	sq_array[idx] = idx;
	__atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring_fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -1000;
	head = *cq_head;
	if (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE))
		return -1001;
	res = cqes[head & *cq_mask].res;
	__atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

int main(int argc, char **argv)
{
	int direct = argc > 2 && strcmp(argv[2], "direct") == 0;
	char buf[64];
	int res;

	if (argc < 2 || setup() < 0) {
		perror("io_uring_setup");
		return 2;
	}
	if (direct) {
		int empty = -1; /* one empty slot in a fixed-file table */

		if (syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_FILES, &empty, 1) < 0) {
			perror("io_uring_register");
			return 2;
		}
	}
	res = submit_openat(argv[1], direct ? 1 : 0); /* file_index is slot + 1 */
	if (res < 0) {
		fprintf(stderr, "openat via io_uring failed: %d\n", res);
		return 1;
	}
	if (direct) {
		printf("slot 0\n");
	} else {
		printf("fd %d\n", res);
		if (read(res, buf, sizeof(buf)) <= 0)
			return 1;
	}
	return 0;
}
