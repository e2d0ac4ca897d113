-- Every script starts here. ARGV[1] is the table of key names Rust's
-- store::keys::script_prefixes gives (a prefix ends where the script appends
-- an id, `<repo>:<branch>` or `<cluster>[:<index>]`); A holds the verb's own
-- arguments, ARGV[2] on.
local K = cjson.decode(ARGV[1])
local A = {}
for i = 2, #ARGV do A[i - 1] = ARGV[i] end
