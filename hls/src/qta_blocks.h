// Ping-pong blocks between dataflow processes: hls::stream_of_blocks, or its C-simulation model.
//
// Vitis HLS builds `hls::stream_of_blocks<T, 2>` (hls_streamofblocks.h, shipped only with Vitis)
// as a two-slot ping-pong memory with explicit acquire/release: the producer fills one slot
// while the consumer reads the other. The Tcl flow compiles with -DQTA_VITIS_BLOCKS and gets
// exactly that. Everywhere else (g++ C-simulation, the testbench, the emulation) this header
// provides a plain C++ model with the same interface and the same semantics as Vitis
// C-simulation: dataflow processes run one after another, so the producer releases every
// block before the consumer acquires the first and the queue is unbounded. The kernel code
// is identical in both cases; only this library class differs (as hls_stream.h does).
//
// Every block the model hands out is filled with a poison pattern first, so a process that
// reads a word its producer did not write sees garbage in C-simulation as it would in
// hardware (the tests would catch it).
#ifndef QTA_BLOCKS_H
#define QTA_BLOCKS_H

#ifdef QTA_VITIS_BLOCKS
#include "hls_streamofblocks.h"
#define QTA_BLOCKS(T, name) hls::stream_of_blocks<T, 2> name
#define QTA_WRITE_LOCK(T, var, blocks) hls::write_lock<T> var##_lock(blocks); T &var = var##_lock
#define QTA_READ_LOCK(T, var, blocks) hls::read_lock<T> var##_lock(blocks); T &var = var##_lock
#else
#include <cstdlib>
#include <cstring>
#include <deque>

template <typename T>
class qta_blocks_model {
  public:
    qta_blocks_model() : writing_(nullptr) {}
    ~qta_blocks_model() {
        for (Block *b : queue_) delete b;
        delete writing_;
    }
    T &acquire_write() {
        writing_ = new Block;
        std::memset(static_cast<void *>(writing_), 0x5A, sizeof(Block));  // poison: see above
        return writing_->v;
    }
    void release_write() {
        queue_.push_back(writing_);
        writing_ = nullptr;
    }
    T &acquire_read() {
        if (queue_.empty()) {
            // A consumer ran ahead of its producer: impossible in a correct dataflow region.
            std::abort();
        }
        return queue_.front()->v;
    }
    void release_read() {
        delete queue_.front();
        queue_.pop_front();
    }

  private:
    qta_blocks_model(const qta_blocks_model &);
    qta_blocks_model &operator=(const qta_blocks_model &);
    struct Block {
        T v;  // T is an array type: wrap it so that new/delete handle one block
    };
    std::deque<Block *> queue_;
    Block *writing_;
};

template <typename T>
class qta_write_lock_model {
  public:
    explicit qta_write_lock_model(qta_blocks_model<T> &s) : s_(s), b_(s.acquire_write()) {}
    ~qta_write_lock_model() { s_.release_write(); }
    operator T &() { return b_; }

  private:
    qta_blocks_model<T> &s_;
    T &b_;
};

template <typename T>
class qta_read_lock_model {
  public:
    explicit qta_read_lock_model(qta_blocks_model<T> &s) : s_(s), b_(s.acquire_read()) {}
    ~qta_read_lock_model() { s_.release_read(); }
    operator T &() { return b_; }

  private:
    qta_blocks_model<T> &s_;
    T &b_;
};

#define QTA_BLOCKS(T, name) qta_blocks_model<T> name
#define QTA_WRITE_LOCK(T, var, blocks) qta_write_lock_model<T> var##_lock(blocks); T &var = var##_lock
#define QTA_READ_LOCK(T, var, blocks) qta_read_lock_model<T> var##_lock(blocks); T &var = var##_lock
#endif

#endif
