import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.function.IntUnaryOperator;

/**
 * How deep each kind of recursion gets before StackOverflowError: tests/unit/test_init.py runs
 * it with the JVM options the init adds and without them.
 *
 * <p>Usage: {@code java Depths main|thread KIND...}; prints "KIND DEPTH" per kind, the deepest
 * of a few tries (the first runs interpreted, the later ones compiled). "thread" runs them in a
 * thread the program starts without a stack size of its own.
 */
public class Depths {
    static final int TRIES = 5;
    static int depth;

    // plain: a few locals.
    static int plain(int n) {
        depth = n;
        int a = n * 3, b = a ^ n;
        return plain(n + 1) + a - b;
    }

    // lambda: through an interface, implemented by a lambda.
    static final IntUnaryOperator LAMBDA = n -> {
        depth = n;
        return Depths.LAMBDA.applyAsInt(n + 1) + 1;
    };

    // descent: a recursive-descent parser over deeply nested lists, "[1,[1,[1,...2]]]".
    static String text;
    static int pos;

    static Object value(int level) {
        depth = level;
        if (text.charAt(pos) == '[') {
            pos++;
            List<Object> list = new ArrayList<>();
            while (text.charAt(pos) != ']') {
                list.add(value(level + 1));
                if (text.charAt(pos) == ',') pos++;
            }
            pos++;
            return list;
        }
        int start = pos;
        while (Character.isDigit(text.charAt(pos))) pos++;
        return Integer.parseInt(text, start, pos, 10);
    }

    static void descent() {
        if (text == null) {
            int n = 400_000;
            text = "[1,".repeat(n) + "2" + "]".repeat(n);
        }
        pos = 0;
        value(0);
    }

    // wide: many locals, a long frame.
    static long wide(int n, long p, long q, double r) {
        depth = n;
        long a = p + n, b = q ^ a, c = a * 31 + b, d = c - p, e = d * q, f = e + a;
        double g = r * a, h = g + b, i = h / (c | 1), j = i * d, k = j + e, l = k - f;
        long m = wide(n + 1, a + b, c + d, g + h);
        return m + a + b + c + d + e + f + (long) (g + h + i + j + k + l);
    }

    // build: a nested configuration map, one level per call.
    static Map<String, Object> build(int n) {
        depth = n;
        Map<String, Object> m = new HashMap<>();
        m.put("level", n);
        m.put("child", build(n + 1));
        return m;
    }

    // chain: a visitor, accept -> visit -> children -> accept, each method too large for C1 to
    // inline; C2 inlines the whole chain.
    static final class Conf {
        final String key;
        final Conf child;

        Conf(String key, Conf child) {
            this.key = key;
            this.child = child;
        }
    }

    static Conf deep;

    static int accept(Conf c, int n) {
        depth = n;
        if (c == null) return 0;
        int h = c.key.length() * 31 + n;
        if (h % 1000003 == 7) h += c.key.hashCode();
        return visit(c, n, h) + (h & 1);
    }

    static int visit(Conf c, int n, int h) {
        int x = h ^ (n << 3);
        if (x % 999983 == 11) x += c.key.hashCode();
        if (x % 999979 == 13) x -= n;
        return children(c, n, x) + (x & 3);
    }

    static int children(Conf c, int n, int x) {
        int y = x + n;
        if (y % 999961 == 17) y ^= c.key.length();
        if (y % 999959 == 19) y += 5;
        return accept(c.child, n + 1) + (y & 7);
    }

    static void chain() {
        if (deep == null) {
            for (int i = 0; i < 1_000_000; i++) deep = new Conf("k" + (i & 7), deep);
        }
        accept(deep, 0);
    }

    static void once(String kind) {
        switch (kind) {
            case "plain" -> plain(0);
            case "lambda" -> LAMBDA.applyAsInt(0);
            case "descent" -> descent();
            case "wide" -> wide(0, 1, 2, 3.0);
            case "build" -> build(0);
            case "chain" -> chain();
            default -> throw new IllegalArgumentException("unknown kind " + kind);
        }
    }

    static int deepest(String kind) {
        int max = 0;
        for (int i = 0; i < TRIES; i++) {
            depth = 0;
            try {
                once(kind);
                throw new IllegalStateException(kind + " ended without overflowing the stack");
            } catch (StackOverflowError e) {
                max = Math.max(max, depth);
            }
        }
        return max;
    }

    public static void main(String[] args) throws InterruptedException {
        Runnable all = () -> {
            for (int i = 1; i < args.length; i++) {
                System.out.println(args[i] + " " + deepest(args[i]));
            }
        };
        if (args[0].equals("thread")) {
            Thread thread = new Thread(all);
            thread.start();
            thread.join();
        } else {
            all.run();
        }
    }
}
