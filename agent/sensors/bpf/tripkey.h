/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Record layouts shared by tripkey.bpf.c and agent/sensors/_ebpf_records.py.
 *
 * The Python side mirrors these with struct formats and checks the sizes against the constants
 * at start (tests check them too): change both together. Every field is naturally aligned and
 * padded explicitly, so clang's BPF layout and Python's struct layout cannot differ.
 */
#ifndef TRIPKEY_H
#define TRIPKEY_H

#define TK_PATH_LEN 512        /* exe / cwd buffers: components leaf-first, each NUL-terminated */
#define TK_PATH_SPAN 256       /* a component starts below this offset, so one more (<= 256) fits */
#define TK_PATH_DEPTH 40       /* dentries + mount crossings walked per path */
#define TK_ARGS_LEN 4096       /* the reader's own argv, copied at open time */
#define TK_CACHE_ARGS_LEN 384  /* an ancestor's argv, copied at exec time into the process cache;
                                * 384 keeps a cache element (48 B header + key + value) within
                                * the kernel allocator's 1 KiB size class instead of 2 KiB */
#define TK_MAX_ANC 32          /* ancestors (tgid, start, uid) carried in a read record */

/* tk_read.flags and tk_proc.flags */
#define TK_F_EXE_CUT 0x1        /* exe path longer than the buffer: the tail (leaf side) is kept */
#define TK_F_EXE_DELETED 0x2    /* the executable was unlinked (/proc shows " (deleted)") */
#define TK_F_ARGS_CUT 0x4       /* argv longer than the buffer (args_total says how long) */
#define TK_F_ARGS_FAULT 0x8     /* argv could not be read (page not resident) */
#define TK_F_CWD_CUT 0x10
#define TK_F_ANC_CUT 0x20       /* more than TK_MAX_ANC ancestors */
#define TK_F_EXE_CACHED 0x40    /* reader's exe came from its process-cache entry */
#define TK_F_NO_EXE 0x80        /* no mm / no exe_file (kernel thread, exiting task) */
#define TK_F_FORKED 0x400       /* entry copied from the parent at fork, no exec since */
#define TK_F_NO_CWD 0x800       /* no fs_struct (an exiting task): an empty cwd is unknown, not "/" */

/* tk_read.source: the x86-64 syscall number that opened the file, or one of these */
#define TK_SRC_IOURING 0x10000   /* | the io_uring opcode */
#define TK_SRC_LSM 0x20000       /* | the syscall number current was in (not an open-family one) */

/* Per-CPU counters (index into the `counters` array map). */
enum tk_counter {
	TK_C_READS = 0,        /* read records submitted */
	TK_C_LOST,             /* ring buffer full: a read was seen and could not be reported */
	TK_C_OWN,              /* opens by the agent itself, skipped */
	TK_C_ANC_MISS,         /* ancestor without a cache entry (started before the agent) */
	TK_C_READER_MISS,      /* reader without a cache entry (exe walked at open time) */
	TK_C_CACHE_FULL,       /* process cache full: an exec/fork could not be cached */
	TK_C_EXEC,
	TK_C_FORK,
	TK_C_FORK_UNKNOWN,     /* fork of a process not in the cache (its child will be filled from /proc) */
	TK_C_EXIT,
	TK_C_KEPT,             /* exited while pinned: entry kept for userspace */
	TK_C_ARGS_FAULT,
	TK_C_IOURING,          /* io_uring opens of watched files */
	TK_C_IOURING_DIRECT,   /* io_uring direct (fixed-file) opens: not resolvable, counted */
	TK_C_REPEATS,          /* opens sent as a tk_repeat (included in TK_C_READS) */
	TK_C_MAX = 16,
};

struct tk_file_key {   /* watched map key: the file's inode, whatever name opens it */
	__u32 dev;         /* inode->i_sb->s_dev, kernel encoding MAJOR << 20 | MINOR */
	__u32 pad;
	__u64 ino;         /* inode->i_ino */
};

struct tk_proc_key {   /* process cache key: a pid alone is reused, pid + start time is not */
	__u32 tgid;
	__u32 pad;
	__u64 start_ns;    /* group leader's start_boottime (ns since boot, what /proc/pid/stat shows) */
};

struct tk_proc {       /* process cache value, written at exec (copied at fork) */
	__u64 exec_ns;     /* CLOCK_BOOTTIME of the exec this image came from: names the image */
	__u64 exit_ns;     /* 0 while alive; set instead of deleting when the entry is pinned */
	__u32 pinned;      /* a read record names this process: keep the entry past its exit */
	__u32 ppid;
	__u32 flags;
	__u32 pad;
	__u32 args_total;  /* full argv length in bytes (arg_end - arg_start) */
	__u16 exe_len;
	__u16 args_len;
	char exe[TK_PATH_LEN];
	char args[TK_CACHE_ARGS_LEN];
};

struct tk_anc {        /* one ancestor, as seen from the live task at open time */
	__u32 tgid;
	__u32 uid;         /* real uid */
	__u64 start_ns;
	__u64 exec_ns;     /* its cache entry's exec_ns, 0 when it had none */
};

/* Ring-buffer records start with their kind. */
#define TK_REC_READ 1          /* struct tk_read: one open, with everything about its reader */
#define TK_REC_REPEAT 2        /* struct tk_repeat: another open by the same process, nothing changed */
#define TK_REPEAT_WINDOW_NS 1000000000ULL /* a full record at least once a second per process */

struct tk_read {       /* one open of a watched file */
	__u32 kind;        /* TK_REC_READ */
	__u32 flags;
	__u64 time_ns;     /* CLOCK_BOOTTIME at the open's return */
	__u64 start_ns;    /* reader's start_boottime */
	__u64 exec_ns;     /* reader's cache entry exec_ns, 0 when it had none */
	__u64 ino;
	__u64 seq;         /* names this record for the repeats that refer to it (its time_ns) */
	__u32 dev;
	__u32 tgid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;         /* real uid */
	__u32 source;
	__u32 args_total;
	__u32 pad;
	__u16 exe_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 n_anc;
	struct tk_anc anc[TK_MAX_ANC];
	char exe[TK_PATH_LEN];
	char cwd[TK_PATH_LEN];
	char args[TK_ARGS_LEN];
};

struct tk_repeat {     /* an open by a process whose last tk_read (seq) still describes it */
	__u32 kind;        /* TK_REC_REPEAT */
	__u32 source;
	__u64 time_ns;
	__u64 start_ns;
	__u64 ino;
	__u64 seq;
	__u32 dev;
	__u32 tgid;
	__u32 tid;
	__u32 pad;
};

struct tk_last {       /* per process: what its last tk_read was built from (kernel only) */
	__u64 seq;
	__u64 ino;
	__u64 pwd_dentry;  /* cwd */
	__u64 pwd_mnt;
	__u64 parent;      /* the parent task, and its image */
	__u64 parent_mm;
	__u64 mm;          /* its own image and argv area */
	__u64 arg_start;
	__u64 arg_end;
	__u32 dev;
	__u32 uid;
};

struct tk_config {
	__u32 agent_tgid;  /* opens by this process are never reported */
	__u32 pad;
};

#endif /* TRIPKEY_H */
