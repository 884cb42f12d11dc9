use super::*;

fn s(x: &str) -> Value {
    Value::Str(x.into())
}

#[test]
fn dict_of_scalars_and_tuples() {
    // {'a': 1, 'b': (300, -2, 70000), 'c': [1.5, True, None], 'd': 2**40}
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
    p.extend(b"X\x01\0\0\0aK\x01");
    p.extend(b"X\x01\0\0\0bM\x2c\x01J\xfe\xff\xff\xffJ\x70\x11\x01\0\x87");
    p.extend(b"X\x01\0\0\0c](G\x3f\xf8\0\0\0\0\0\0\x88Ne");
    p.extend(b"X\x01\0\0\0d\x8a\x06\0\0\0\0\0\x01");
    p.extend(b"u.");
    let v = load(&p).unwrap();
    let want = Value::Dict(vec![
        (s("a"), Value::Int(1)),
        (
            s("b"),
            Value::Tuple(vec![Value::Int(300), Value::Int(-2), Value::Int(70000)]),
        ),
        (
            s("c"),
            Value::List(vec![Value::Float(1.5), Value::Bool(true), Value::None]),
        ),
        (s("d"), Value::Int(1 << 40)),
    ]);
    assert_eq!(v, want);
}

#[test]
fn long1_negative_and_big() {
    assert_eq!(long(&[0xff]), Value::Int(-1));
    assert_eq!(long(&[0x00, 0x80]), Value::Int(-32768));
    assert_eq!(long(&[]), Value::Int(0));
    assert_eq!(long(&[1; 9]), Value::BigInt(vec![1; 9]));
}

#[test]
fn memo_returns_the_filled_container() {
    // x = []; x is memoized empty, filled, then fetched again: (x, x) with x = [7]
    let p = b"\x80\x02]q\x05K\x07ah\x05\x86.";
    let v = load(p).unwrap();
    let x = Value::List(vec![Value::Int(7)]);
    assert_eq!(v, Value::Tuple(vec![x.clone(), x]));
}

#[test]
fn globals_are_recorded_not_called() {
    // (os.system('echo pwned') with a BUILD state, OrderedDict() filled and BUILT)
    let mut p = b"\x80\x02cos\nsystem\nX\x0a\0\0\0echo pwned\x85R}b".to_vec();
    p.extend(b"ccollections\nOrderedDict\n)R(K\x01K\x02uNb\x86.");
    let v = load(&p).unwrap();
    let items = v.as_seq().unwrap();
    let o = items[0].as_object().unwrap();
    assert_eq!(o.global(), Some(("os", "system")));
    assert_eq!(o.kind, CallKind::Reduce);
    assert_eq!(o.args, Value::Tuple(vec![s("echo pwned")]));
    assert_eq!(o.state, Some(Value::Dict(vec![])));
    assert_eq!(items[1], Value::Dict(vec![(Value::Int(1), Value::Int(2))]));
}

#[test]
fn bad_streams_are_errors() {
    assert!(matches!(
        load(b"\x80\x02\xff."),
        Err(PickleError::UnknownOpcode {
            opcode: 0xff,
            at: 2
        })
    ));
    assert!(matches!(
        load(b"\x80\x02X\x10\0\0\0abc"),
        Err(PickleError::Truncated { at: 2 })
    ));
    assert!(matches!(load(b"\x80\x02K\x01"), Err(PickleError::NoStop)));
    assert!(matches!(
        load(b"\x80\x02u."),
        Err(PickleError::NoMark { at: 2, .. })
    ));
    assert!(matches!(
        load(b"\x80\x02h\x03."),
        Err(PickleError::MissingMemo { key: 3, .. })
    ));
    assert!(matches!(
        load(b"\x80\x02K\x01K\x02a."),
        Err(PickleError::Type { op: "APPEND", .. })
    ));
    // 300 nested tuples by TUPLE1, then 300 nested lists by MARK/LIST.
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend([0x85; 300]);
    deep.push(b'.');
    assert!(matches!(load(&deep), Err(PickleError::TooDeep { .. })));
    let mut deep = b"\x80\x02".to_vec();
    deep.extend([b'('; 300]);
    deep.extend([b'l'; 300]);
    deep.push(b'.');
    assert!(matches!(load(&deep), Err(PickleError::TooDeep { .. })));
    // Billion laughs: each list holds its predecessor twice, read back from the memo.
    let mut laughs = b"\x80\x02]q\x00".to_vec();
    for k in 1..=40u8 {
        laughs.extend([b'(', b'h', k - 1, b'h', k - 1, b'l', b'q', k, b'0']);
    }
    laughs.extend(b"h\x28.");
    assert!(matches!(load(&laughs), Err(PickleError::TooLarge { .. })));
    let mut ok = b"\x80\x02)".to_vec();
    ok.extend([0x85; 200]);
    ok.push(b'.');
    assert!(load(&ok).is_ok());
    assert!(matches!(
        load(b"."),
        Err(PickleError::StackUnderflow { at: 0, .. })
    ));
}
