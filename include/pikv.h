/* pikv — GPT-2-family inference with a compressible, per-head KV cache.
 *
 * Conventions for the whole API:
 *  - functions that can fail return NULL or -1 and record a one-line message
 *    that names the file or parameter at fault; read it with pikv_last_error();
 *  - the library never prints and never calls exit();
 *  - memory returned to the caller is released with pikv_free().
 *
 * Arguments: every function checks its pointers and counts. A NULL object or
 * output pointer, an index outside the model (layer, head, token id) or a count
 * the model cannot hold (past n_positions, negative) is an error: the function
 * returns -1 (int and double results), NULL (pointer results) or 0 (size_t
 * results) with a message, and changes nothing. Exceptions, as in free():
 * the *_free functions and pikv_session_reset accept NULL and do nothing; the
 * functions that fill a caller's struct (pikv_model_get_info,
 * pikv_session_press_stats) zero it when the object is NULL and do nothing when
 * the struct pointer is NULL. Optional pointers are marked "may be NULL".
 */
#ifndef PIKV_H
#define PIKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors and memory ------------------------------------------------- */

const char *pikv_last_error(void);
void pikv_clear_error(void);
void pikv_free(void *p);

/* ---- model ------------------------------------------------------------- */

/* The hyper-parameters of a GPT-2-family checkpoint, from its config.json. */
typedef struct pikv_config {
    int n_layer, n_head, n_embd, head_dim;
    int n_inner;       /* MLP width: n_inner, or 4 * n_embd when null */
    int n_positions;   /* hard limit on absolute positions */
    int vocab_size;
    float layer_norm_epsilon;
    int scale_attn_weights;               /* divide scores by sqrt(head_dim) */
    int scale_attn_by_inverse_layer_idx;  /* and by (layer + 1) */
    int bos_token_id, eos_token_id;       /* -1 when absent */
} pikv_config;

typedef struct pikv_model pikv_model;

/* The type the weight matrices are kept in while the model is loaded: c_attn,
 * c_proj, c_fc, the MLP's c_proj and wte (the tied LM head) or an own
 * lm_head. Layer norms, biases and wpe are float32 whatever the type. */
typedef enum pikv_weight_type {
    PIKV_WEIGHTS_AS_STORED = 0, /* the checkpoint's type when every tensor has one of F32, F16, BF16; else F32 */
    PIKV_WEIGHTS_F32,
    PIKV_WEIGHTS_F16,           /* IEEE half */
    PIKV_WEIGHTS_BF16,          /* bfloat16 */
} pikv_weight_type;
/* "stored", "f32", "f16", "bf16"; NULL for a value outside the enum. */
const char *pikv_weight_type_name(pikv_weight_type t);

/* Options of loading, in llama.h's manner: start from the defaults. */
typedef struct pikv_model_params {
    pikv_weight_type weights;   /* default PIKV_WEIGHTS_AS_STORED */
} pikv_model_params;
pikv_model_params pikv_model_default_params(void);

/* Load config.json and model.safetensors (or the shards listed in
 * model.safetensors.index.json) from a Hugging Face model directory. Weights in
 * F32, F16 or BF16 are converted once into the type params ask for (rounding
 * to nearest even where it is narrower than the stored type). Every file must
 * be a regular file; sizes computed from config.json are checked for
 * overflow; a sharded checkpoint's tensors are read from the shard its
 * weight_map names; a header naming a tensor twice is refused. */
pikv_model *pikv_model_load_with_params(const char *dir, const pikv_model_params *params);
/* The same with every weight in float32 (PIKV_WEIGHTS_F32). */
pikv_model *pikv_model_load(const char *dir);
void pikv_model_free(pikv_model *m);
const pikv_config *pikv_model_config(const pikv_model *m);

/* What `pikv inspect` shows about a loaded model. */
typedef struct pikv_model_info {
    char dir[512];
    char architecture[64];   /* e.g. GPT2LMHeadModel */
    char stored_dtype[16];   /* F32, F16, BF16 or mixed */
    size_t n_params;         /* parameters actually used by the forward pass */
    size_t file_bytes;       /* bytes of the safetensors file(s) */
    size_t weight_bytes;     /* bytes of the weights in memory */
    pikv_weight_type weight_type;    /* the matrices' type in memory: F32, F16 or BF16 */
    int n_tensors;
    int tied_lm_head;        /* 1 when the LM head is wte transposed */
    size_t nonfinite_weights;        /* NaN or infinite values found while loading */
    char first_nonfinite_tensor[128];
} pikv_model_info;
void pikv_model_get_info(const pikv_model *m, pikv_model_info *info);

/* ---- tokenizer --------------------------------------------------------- */

typedef struct pikv_tokenizer pikv_tokenizer;

/* Load vocab.json and merges.txt from a model directory; special tokens come
 * from tokenizer.json's added_tokens or tokenizer_config.json when present,
 * and <|endoftext|> is special when it is in the vocabulary. */
pikv_tokenizer *pikv_tokenizer_load(const char *dir);
void pikv_tokenizer_free(pikv_tokenizer *t);
int pikv_tokenizer_vocab_size(const pikv_tokenizer *t);
/* 0 when every id the tokenizer can produce is a row of the model's embedding
 * (vocab size <= the model's vocab_size); -1 with a message naming both sizes
 * otherwise. Call it when pairing a tokenizer with a model. */
int pikv_tokenizer_check_model(const pikv_tokenizer *t, const pikv_model *m);

/* Encode UTF-8 text into token ids exactly as GPT-2's byte-level BPE does.
 * Invalid UTF-8 is an error. *ids is allocated (free with pikv_free). */
int pikv_tokenize(const pikv_tokenizer *t, const char *text, size_t len,
                  int32_t **ids, size_t *n_ids);

/* Decode ids into bytes (NUL-terminated; may end inside a UTF-8 sequence when
 * the ids do). An id outside the vocabulary is an error. */
char *pikv_detokenize(const pikv_tokenizer *t, const int32_t *ids, size_t n_ids,
                      size_t *len);

/* ---- inference session: one sequence and its KV cache --------------------- */

typedef struct pikv_session pikv_session;

/* A session owns the KV cache and the scratch buffers for one sequence.
 * n_threads <= 0 means all cores; more than 4096 is an error. */
pikv_session *pikv_session_new(const pikv_model *m, int n_threads);

/* How the KV cache stores each key or value row, with llama.cpp's names and
 * block layouts: float32, IEEE half, bfloat16, and the block formats q8_0
 * (blocks of 32 values: one f16 scale and 32 signed bytes) and q4_0 (blocks of
 * 32: one f16 scale and 16 bytes of 4-bit values). The quantized types need a
 * head_dim that is a multiple of 32. Attention and presses read the values a
 * row decodes to. */
typedef enum pikv_kv_type {
    PIKV_KV_F32,
    PIKV_KV_F16,
    PIKV_KV_BF16,
    PIKV_KV_Q8_0,
    PIKV_KV_Q4_0,
    PIKV_KV_N_TYPES
} pikv_kv_type;
/* The type named "f32", "f16", "bf16", "q8_0" or "q4_0": 0, or -1 (with an
 * error naming the value) for any other name. */
int pikv_kv_type_from_name(const char *name, pikv_kv_type *out);
/* The name of a type ("f32", ...); "?" for a value outside the enum. */
const char *pikv_kv_type_name(pikv_kv_type t);

/* A session's options, in llama.h's manner: start from the defaults and set
 * what you need. */
typedef struct pikv_session_params {
    int n_threads;         /* <= 0: all cores (default) */
    int workers;           /* decode attention on this many placed workers; <= 1: off (default) */
    int balanced_workers;  /* 1: place heads by DeepSeek's EPLB (default); 0: an equal count each */
    pikv_kv_type kv_type_k; /* how keys are stored (default PIKV_KV_F32) */
    pikv_kv_type kv_type_v; /* how values are stored (default PIKV_KV_F32) */
    /* Where the session's calls run: NULL or "cpu" (default), or "cuda" for
     * the GPU engine in a library built with it (make cuda); elsewhere
     * "cuda" fails with a message that says so. On the GPU the model's
     * weights and the KV cache are stored in device_weights' type (f32, f16,
     * or bf16 for PIKV_WEIGHTS_AS_STORED and BF16), which replaces kv_type_k
     * and kv_type_v; n_threads is what the host's part (a press's decision)
     * may use; workers and mark/rewind are not on the GPU. */
    const char *device;
    pikv_weight_type device_weights; /* default PIKV_WEIGHTS_AS_STORED: bf16 on the GPU */
} pikv_session_params;
pikv_session_params pikv_session_default_params(void);
pikv_session *pikv_session_new_with_params(const pikv_model *m, const pikv_session_params *p);
void pikv_session_free(pikv_session *s);
/* Forget the sequence: the cache is emptied (and its memory released). */
void pikv_session_reset(pikv_session *s);

/* Run n tokens through the model at the next absolute positions, appending
 * their keys and values to the cache. Writes the logits of the last position
 * ([vocab]) or, with all_logits, of every position ([n, vocab]) to logits
 * (may be NULL). Fails when the positions would pass n_positions. */
int pikv_forward(pikv_session *s, const int32_t *ids, int n, float *logits,
                 int all_logits);

/* The model the session runs. */
const pikv_model *pikv_session_model(const pikv_session *s);
/* Run decode attention on `workers` parallel workers (threads), placing the
 * heads' caches on them by DeepSeek's EPLB (balanced != 0: heavy heads are
 * split into replicas that read equal slices) or by an equal count of heads
 * each; partial softmaxes are merged exactly. workers <= 1 turns it off. */
int pikv_session_set_workers(pikv_session *s, int workers, int balanced);
/* Mean over placed decode steps and layers of max/mean worker load (1 = even). */
double pikv_session_worker_imbalance(const pikv_session *s);
/* Where the session runs: "cpu", or the device it was made for ("cuda"). */
const char *pikv_session_device(const pikv_session *s);
/* Threads the session's forward pass uses. */
int pikv_session_threads(const pikv_session *s);
/* Absolute position of the next token (tokens seen so far). */
int pikv_session_position(const pikv_session *s);
/* Bytes of KV cache memory actually allocated (payload + position index). */
size_t pikv_session_kv_bytes(const pikv_session *s);
/* How the session's cache stores keys and values (pikv_session_params);
 * either pointer may be NULL. */
int pikv_session_kv_types(const pikv_session *s, pikv_kv_type *type_k, pikv_kv_type *type_v);
/* Entries held by one (layer, head) of the cache; -1 for a layer or head
 * outside the model. */
int pikv_session_kv_len(const pikv_session *s, int layer, int head);
/* Copy the cached key or value rows of one (layer, head) as floats (what a
 * row of the session's KV type decodes to): [len, head_dim]. Returns len; -1
 * when the rows do not fit in cap_rows. */
int pikv_session_kv_read(const pikv_session *s, int layer, int head, int values,
                         float *out, int cap_rows);
/* Copy the absolute positions of the entries one (layer, head) holds, in
 * storage order: [len]. */
int pikv_session_kv_positions(const pikv_session *s, int layer, int head,
                              int32_t *out, int cap);

/* ---- sampling and generation -------------------------------------------- */

typedef struct pikv_sampling {
    int greedy;          /* 1: argmax, the other fields are ignored */
    float temperature;   /* > 0 */
    int top_k;           /* 0 = off */
    float top_p;         /* 1 = off */
    uint64_t seed;
} pikv_sampling;

/* Pick the next token from logits ([vocab], vocab > 0); rng is the generator's
 * state, seeded from pikv_sampling.seed (may be NULL when greedy). Overwrites
 * logits with probabilities. */
int pikv_sample(float *logits, int vocab, const pikv_sampling *p, uint64_t *rng);

typedef struct pikv_generation {
    int32_t *ids;        /* generated ids (free with pikv_free) */
    int n_ids;
    double prefill_s;    /* wall-clock seconds of the prompt's forward pass */
    double decode_s;     /* seconds of the n_ids - 1 single-token passes after it */
} pikv_generation;

/* What to generate, in llama.h's manner: start from the defaults. */
typedef struct pikv_generation_params {
    int max_new_tokens;      /* default 32 */
    pikv_sampling sampling;  /* default greedy */
    int stop_id;             /* stop after this id (-1, the default: never) */
} pikv_generation_params;
pikv_generation_params pikv_generation_default_params(void);
/* pikv_generate with its options in one struct. */
int pikv_generate_with_params(pikv_session *s, const int32_t *prompt, int n_prompt,
                              const pikv_generation_params *p, pikv_generation *out);

/* Prefill the prompt (after whatever the session already holds), then generate up to
 * max_new_tokens, stopping early at stop_id (>= 0); prompt and new tokens must
 * fit in n_positions together. */
int pikv_generate(pikv_session *s, const int32_t *prompt, int n_prompt,
                  int max_new_tokens, const pikv_sampling *p, int stop_id,
                  pikv_generation *out);

/* ---- presses: KV-cache compression ------------------------------------- */

typedef struct pk_press pikv_press;

/* Build a press from its spec, e.g. "snapkv:ratio=0.5,window=64",
 * "adakv(expected_attention):0.5", "composed[knorm:0.2,streaming_llm:0.3]".
 * The error names the position and reason of a syntax error, or the parameter
 * at fault. The model supplies layer counts and default pattern files; it may
 * be NULL for presses that need neither (duo, decoding and per_layer then fail
 * with a message); model_dir may be NULL (then duo needs pattern=). */
pikv_press *pikv_press_new(const char *spec, const pikv_model *m, const char *model_dir);
void pikv_press_free(pikv_press *p);
const char *pikv_press_name(const pikv_press *p);
/* The nominal fraction of entries it removes (1 - prod(1 - r) for compositions). */
double pikv_press_ratio(const pikv_press *p);
/* 1 when the press acts while generating (compression every N tokens) rather
 * than once after the prefill. */
int pikv_press_acts_while_generating(const pikv_press *p);
/* 1 when later queries read the cache it compressed through its route table
 * (moe_router with route=1), so that pikv_press_routing_stats applies. */
int pikv_press_routes_queries(const pikv_press *p);

/* Like pikv_forward (logits of the last position), with the press compressing
 * each layer's cache right after that layer's attention has used the full
 * cache (kvpress's semantics). A press that acts while generating is attached
 * to the session instead and acts on every later call until the next reset;
 * one that routes queries (moe_router route=1) makes every later call read the
 * cache through its route table until the next reset or compressing prefill.
 * Either must outlive that use. press may be NULL. After a failure the session
 * must be reset.
 *
 * Threads: a press never changes after it is built, and sessions on several
 * threads may share it -- except a press that keeps per-run state (decoding,
 * moe_router, and compositions that hold one): it serves one session at a
 * time, from that session's prefill with it until the session is reset, freed
 * or prefilled with another press, and a prefill by another session meanwhile
 * fails with "press '...' is in use by another session". Freeing such a press
 * while a session holds it ends that session's use of it. A session itself is
 * used by one thread at a time. */
int pikv_prefill(pikv_session *s, const int32_t *ids, int n, pikv_press *press, float *logits);

typedef struct pikv_press_stats {
    size_t kv_bytes_before;  /* bytes the compressed layers held before their press ran */
    size_t kv_bytes_after;   /* ... and after */
    double compression_s;    /* seconds spent inside presses */
} pikv_press_stats;
/* What the presses did since the last reset. */
void pikv_session_press_stats(const pikv_session *s, pikv_press_stats *st);

/* Query-time routing (moe_router with route=1): over the (query, layer, head)
 * triples that read a routed cache since the last reset, the share of the
 * visible entries they read, and -- on the sampled queries, where full
 * attention over the kept cache was computed as well -- the attention mass
 * full attention puts on the entries the routing skipped. */
typedef struct pikv_routing_stats {
    long queries;
    double fraction_read;    /* entries read / entries visible, summed over queries */
    long sampled;
    double mass_missed;      /* mean over sampled queries */
    double mass_missed_max;
} pikv_routing_stats;
/* The press's routing statistics (then zeroed when reset != 0); -1 when the
 * press does not route. */
int pikv_press_routing_stats(pikv_press *p, pikv_routing_stats *st, int reset);

/* Remember the cache as it is (e.g. a compressed context), and later drop
 * everything added since, returning its memory: several questions can then be
 * answered against one compressed context. Rewinding fails if the cache was
 * compressed again after the mark. */
int pikv_session_mark(pikv_session *s);
int pikv_session_rewind(pikv_session *s);

/* kvpress's text-generation pipeline: a context, compressed once, then each
 * question answered greedily against it, the cache rewound between questions.
 * Query-aware mode instead prefills context + question together for each
 * question, so the press sees the question when it compresses. */
typedef struct pikv_qa_request {
    const int32_t *context;
    int n_context;
    const int32_t *const *questions;   /* may be NULL when n_questions == 0 */
    const int *n_question;
    int n_questions;                   /* 0: continue the context itself */
    int max_new_tokens;
    int stop_id;                       /* -1: none */
    int query_aware;
} pikv_qa_request;

typedef struct pikv_qa_result {
    int n_answers;
    int32_t **answers;                 /* [n_answers] generated ids */
    int *n_answer;
    size_t kv_bytes_before;            /* the first compression: cache before its press ran */
    size_t kv_bytes_after;             /* ... and after it, before any question */
    double prefill_s;                  /* context and question forward passes, presses excluded */
    double compression_s;              /* inside presses */
    double decode_s;                   /* generated tokens after the first of each answer */
    int decode_tokens;
} pikv_qa_result;

int pikv_answer(pikv_session *s, pikv_press *press, const pikv_qa_request *rq, pikv_qa_result *out);
void pikv_qa_result_free(pikv_qa_result *r);

/* Generate from logits the session has just produced (e.g. by pikv_prefill);
 * logits ([vocab]) is used as scratch. prefill_s is 0. */
int pikv_generate_from(pikv_session *s, float *logits, int max_new_tokens, const pikv_sampling *p, int stop_id,
                       pikv_generation *out);

/* Monotonic wall clock in seconds. */
double pikv_now(void);

#ifdef __cplusplus
}
#endif
#endif
